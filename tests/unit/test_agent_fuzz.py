"""The guest agent's request handlers, fuzzed over its socket port: any message gets a clear answer.

The real agent (``python -m ember.agent --listen``: its session over a
``SocketPort``) runs in a jail of its own (an unprivileged uid, a read-only root,
no network: what it is asked to write, run or delete stays in there), and
Hypothesis sends it what a host could: requests with any op, fields of the right
types with any values or of any JSON, frames of every kind on any stream id. A
request must end in a result or an error with a stable code (never
``internal_error``, which means the agent did not expect what happened), or be
cancellable when it legitimately waits (a process reading its stdin); a broken
frame must make the agent ask for a new sync; and after every message the agent
still answers a ping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import time
import types
import typing
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.protocol import messages
from ember.protocol.codes import ErrorCode
from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    HOST_SYNC_MAGIC,
    NONCE_BYTES,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_credit,
    encode_frame,
)
from ember.protocol.wire import WireModel
from ember.vmm.jail import Jailer, python_jail

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jailing the agent needs root")

UID = 299_960
#: How long a request may take before the host gives up on it and cancels it.
ANSWER_S = 2.0
#: How long an answer that must come may take (a sync, the answer to a CANCEL): a loaded
#: host can take seconds to schedule the agent, and waiting longer costs nothing when it is well.
MUST_ANSWER_S = 30.0
CODES = {code.value for code in ErrorCode}


class AgentHost:
    """The host's end of the agent channel, byte by byte: frames in and out, sync, credit."""

    def __init__(self, path: Path) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.connect(str(path))
        self._decoder = FrameDecoder()
        self._frames: deque[Frame] = deque()
        self._next_stream = 1

    def close(self) -> None:
        self._socket.close()

    def send(self, data: bytes) -> None:
        self._socket.sendall(data)

    def sync(self) -> None:
        """A new session: the agent drops the old one's requests and answers with its magic."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.send(HOST_SYNC_MAGIC + nonce)
        expected, received = AGENT_SYNC_MAGIC + nonce, b""
        deadline = time.monotonic() + MUST_ANSWER_S
        while expected not in received:
            received += self._read(deadline, "the sync answer")
        self._decoder = FrameDecoder()
        self._frames = deque(self._decoder.feed(received.split(expected, 1)[1]))

    def stream_id(self) -> int:
        self._next_stream += 1
        return self._next_stream

    def answer(self, stream_id: int, timeout_s: float = ANSWER_S) -> dict[str, Any] | None:
        """The result or error that ends ``stream_id`` (a session error on stream 0 too); None: none yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if frame.kind in (FrameKind.STDOUT, FrameKind.STDERR, FrameKind.DATA):
                    self.send(encode_credit(frame.stream_id, len(frame.payload)))
                elif frame.kind == FrameKind.MESSAGE:
                    message = frame.json()
                    if frame.stream_id in (stream_id, 0) and message.get("type") in ("result", "error"):
                        return message
            try:
                self._frames.extend(self._decoder.feed(self._read(deadline, f"stream {stream_id}'s answer")))
            except TimeoutError:
                return None

    def _read(self, deadline: float, what: str) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(what)
        self._socket.settimeout(remaining)
        try:
            data = self._socket.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError(what) from None
        assert data, f"the agent closed the channel while the host waited for {what}"
        return data

    def request(self, message: dict[str, Any], body: list[bytes] | None = None) -> dict[str, Any]:
        """Send a request (and a body: DATA frames, then END) and return how it ended."""
        stream_id = self.stream_id()
        self.send(encode_frame(FrameKind.MESSAGE, stream_id, json.dumps(message).encode()))
        for chunk in body or []:
            self.send(encode_frame(FrameKind.DATA, stream_id, chunk))
        if body is not None:
            self.send(encode_frame(FrameKind.END, stream_id))
        answer = self.answer(stream_id)
        if answer is None:  # it waits on something (stdin, a file watch): the host may give up on it
            self.send(encode_frame(FrameKind.CANCEL, stream_id))
            answer = self.answer(stream_id, MUST_ANSWER_S)
            assert answer is not None, f"{message.get('op')!r} neither answered nor took a CANCEL"
        return answer

    def ping(self) -> None:
        answer = self.request({"op": "ping"})
        assert answer["type"] == "result" and answer["result"]["version"] == messages.PROTOCOL_VERSION


@dataclass
class JailedAgent:
    host: AgentHost
    log: Path
    #: Its working directory (relative paths), on the host too.
    workdir: Path


def _uid_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if entry.name.isdigit() and uid_line.split()[1:2] == [str(UID)]:
            found.append(int(entry.name))
    return found


def _kill_jailed() -> None:
    """Every process of the jail's uid: the agent and whatever it started."""
    deadline = time.monotonic() + 10
    while (pids := _uid_processes()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not _uid_processes(), "processes of the jailed agent outlived it"


async def _spawn(argv: list[str], log_fd: int, jail: Any) -> int:
    jailer = Jailer()
    try:
        return await jailer.spawn(argv, [log_fd, log_fd], jail)
    finally:
        await jailer.close()  # the agent runs on without it


@pytest.fixture(scope="module")
def jailed_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JailedAgent]:
    base = tmp_path_factory.mktemp("agent-fuzz")
    own, root = base / "own", base / "root"
    for directory in (own, root, own / "app", own / "state"):
        directory.mkdir()
        os.chown(directory, UID, UID)
    accounts = tuple((Path(f"/etc/{name}"), False) for name in ("passwd", "group"))
    jail = dataclasses.replace(
        python_jail(UID, root),
        binds=(*python_jail(UID, root).binds, *accounts, (own, True)),
        own_network=True,
    )
    socket_path = own / "agent.sock"
    argv = [
        "/usr/bin/env",
        f"EMBER_AGENT_WORKDIR={own / 'app'}",
        f"EMBER_AGENT_STATE_DIR={own / 'state'}",
        "PATH=/usr/bin:/bin",
        sys.executable,
        "-m",
        "ember.agent",
        "--listen",
        str(socket_path),
    ]
    log = base / "agent.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        asyncio.run(_spawn(argv, log_fd, jail))
    finally:
        os.close(log_fd)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert time.monotonic() < deadline, f"the agent did not start:\n{log.read_text()}"
            time.sleep(0.05)
        host = AgentHost(socket_path)
        host.sync()
        host.ping()
        yield JailedAgent(host, log, own / "app")
        host.close()
    finally:
        _kill_jailed()


# ---------------------------------------------------------------- what a host could send

_TEXT = st.text(max_size=40) | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT
)
ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=10,
)


def _typed(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a wire field's type (anything a valid host might put there)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_typed(option) for option in typing.get_args(hint)))
    if origin is list:
        return st.lists(_typed(typing.get_args(hint)[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(_TEXT, _typed(typing.get_args(hint)[1]), max_size=4)
    if isinstance(hint, type) and issubclass(hint, WireModel):
        return _fields(hint)
    return {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(-(2**70), 2**70) | st.integers(-3, 300),
        float: st.floats(allow_nan=True, allow_infinity=True) | st.floats(0.01, 2),
        str: _TEXT | st.sampled_from(["", ".", "/", "//", "/tmp", "a/b", "x", "default-python", "SIGTERM"]),
    }.get(hint, ANY_JSON)


def _fields(model: type[WireModel], mistyped: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """An object with any of ``model``'s fields, of their types (or any JSON, if ``mistyped``)."""
    hints = typing.get_type_hints(model)
    optional = {
        field.name: _typed(hints[field.name]) | ANY_JSON if mistyped else _typed(hints[field.name])
        for field in dataclasses.fields(model)
    }
    return st.fixed_dictionaries({}, optional=optional)


def _request() -> st.SearchStrategy[dict[str, Any]]:
    """A request: mostly a known op with fields of their types, else mistyped fields, else any op."""

    def of(op: str, mistyped: bool) -> st.SearchStrategy[dict[str, Any]]:
        return _fields(messages.REQUESTS[op], mistyped).map(lambda fields: {**fields, "op": op})

    ops = st.sampled_from(sorted(messages.REQUESTS))
    typed, mistyped = ops.flatmap(lambda op: of(op, False)), ops.flatmap(lambda op: of(op, True))
    unknown = st.fixed_dictionaries({"op": ANY_JSON}, optional={"cmd": ANY_JSON, "path": ANY_JSON})
    return st.one_of(typed, typed, typed, mistyped, unknown)


# A frame that breaks the rules: the agent must ask for a new sync (and keep serving after it).
_BROKEN = st.one_of(
    st.tuples(st.just(FrameKind.MESSAGE), st.just(0), st.binary(max_size=16)),
    st.tuples(st.just(FrameKind.MESSAGE), st.integers(1, 2**32 - 1), st.binary(max_size=64)),
    st.tuples(
        st.sampled_from([FrameKind.STDOUT, FrameKind.STDERR]),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=8),
    ),
    st.tuples(st.sampled_from(list(FrameKind)), st.integers(0, 2**32 - 1), st.binary(max_size=64)),
)


def _check_answer(message: dict[str, Any], answer: dict[str, Any]) -> None:
    assert answer["type"] in ("result", "error"), answer
    if answer["type"] == "error":
        assert answer["code"] in CODES, answer
        assert answer["code"] != ErrorCode.INTERNAL_ERROR, f"{message!r} -> {answer['message']}"


_SETTINGS: dict[str, Any] = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}


@settings(max_examples=300, **_SETTINGS)
@given(message=_request(), body=st.lists(st.binary(max_size=64), max_size=3))
def test_any_request_gets_a_clear_answer_and_the_agent_serves_on(
    jailed_agent: JailedAgent, message: dict[str, Any], body: list[bytes]
) -> None:
    host = jailed_agent.host
    op = messages.REQUESTS.get(message["op"]) if isinstance(message["op"], str) else None
    answer = host.request(message, body if op is not None and op.has_body else None)
    _check_answer(message, answer)
    host.ping()


@settings(max_examples=150, **_SETTINGS)
@given(frame=_BROKEN)
def test_a_frame_of_any_kind_on_any_stream_leaves_the_agent_serving(
    jailed_agent: JailedAgent, frame: tuple[FrameKind, int, bytes]
) -> None:
    host = jailed_agent.host
    kind, stream_id, payload = frame
    host.send(encode_frame(kind, stream_id, payload))
    host.sync()
    host.ping()


def test_a_stream_id_in_use_is_a_protocol_error_and_the_next_session_serves(
    jailed_agent: JailedAgent,
) -> None:
    host = jailed_agent.host
    stream_id = host.stream_id()
    waiting = {"op": "file_write", "path": "waits-for-its-body"}  # its body never ends
    host.send(encode_frame(FrameKind.MESSAGE, stream_id, json.dumps(waiting).encode()))
    host.send(encode_frame(FrameKind.MESSAGE, stream_id, json.dumps({"op": "ping"}).encode()))
    answer = host.answer(stream_id)
    assert answer is not None and answer["code"] == ErrorCode.PROTOCOL_ERROR, answer
    host.sync()
    host.ping()


def test_a_file_name_that_is_not_utf8_is_listed_not_a_hang(jailed_agent: JailedAgent) -> None:
    directory = jailed_agent.workdir / "names"
    directory.mkdir()
    with open(os.path.join(os.fsencode(directory), b"caf\xe9"), "wb"):  # Latin-1, not UTF-8
        pass
    answer = jailed_agent.host.request({"op": "file_list", "path": "names"})
    assert answer["type"] == "result", answer
    assert [entry["name"] for entry in answer["result"]["entries"]] == ["caf\ufffd"]


def test_removing_slash_slash_is_refused_as_removing_the_root(jailed_agent: JailedAgent) -> None:
    answer = jailed_agent.host.request({"op": "file_remove", "path": "//", "recursive": True})
    assert answer["type"] == "error" and answer["code"] == ErrorCode.PERMISSION_DENIED, answer
    assert "refusing to remove /" in answer["message"]
