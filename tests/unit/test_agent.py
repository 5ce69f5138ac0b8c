"""The guest agent over its socket port, no VM: its session, its processes and its files.

One real agent (``python -m ember.agent --listen``: its ``Session`` over a
``SocketPort``) serves the whole module from a temporary directory, which holds
its working directory and its state; tests name only paths relative to it. Each
test talks to it over a fresh connection, as a host does after a restart:
through the engine's ``AgentClient``, or frame by frame (``RawHost``) where the
test is about the wire itself (credit, syncs, broken frames). Every process the
agent starts carries a marker in its environment (the image's ``env``), so that
the module's end finds any process a test left behind, kills it and fails.
Where the order of pipe reads must be exact, a ``ManagedProcess`` runs in the
test's own process over a pipe the test writes (no child, so nothing to reap).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ember import errors
from ember.agent.processes import EXIT_DRAIN_S, OUTPUT_BUFFER_BYTES, ManagedProcess, ProcessState
from ember.engine.channel import AgentCall, AgentClient, ChannelState, Chunk, Event
from ember.protocol import messages as m
from ember.protocol.codes import ErrorCode
from ember.protocol.extents import LANES, SLOT_BYTES, TRANSFER_DISK_BYTES
from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    DATA_CHUNK_BYTES,
    HEADER,
    HOST_SYNC_MAGIC,
    INITIAL_WINDOW,
    NONCE_BYTES,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_credit,
    encode_frame,
    encode_message,
)

pytestmark = pytest.mark.timeout(60)

MARKER = "EMBER_AGENT_TEST_RUN"
MIB = 1024 * 1024


# ---------------------------------------------------------------- the agent and its hosts


@dataclass
class RunningAgent:
    socket_path: str
    workdir: Path
    #: The file the agent uses as its transfer disk (``EMBER_AGENT_TRANSFER_DISK``).
    transfer_disk: Path


def _marked_processes(marker: str) -> dict[int, str]:
    """Pids and command lines of the processes whose environment holds ``marker``."""
    found = {}
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def running_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    base = tmp_path_factory.mktemp("agent")
    workdir, state = base / "app", base / "state"
    workdir.mkdir()
    state.mkdir()
    marker = secrets.token_hex(8)
    image = base / "image.json"
    image.write_text(json.dumps({"env": {MARKER: marker}}))
    transfer_disk = base / "transfer.disk"
    with transfer_disk.open("wb") as disk:
        disk.truncate(TRANSFER_DISK_BYTES)
    environment = {
        **os.environ,
        "EMBER_AGENT_WORKDIR": str(workdir),
        "EMBER_AGENT_STATE_DIR": str(state),
        "EMBER_AGENT_IMAGE": str(image),
        "EMBER_AGENT_TRANSFER_DISK": str(transfer_disk),
    }
    socket_path, log = base / "agent.sock", base / "agent.log"
    with log.open("wb") as log_file:
        agent = subprocess.Popen(
            [sys.executable, "-m", "ember.agent", "--listen", str(socket_path)],
            env=environment,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while b"ember agent ready" not in log.read_bytes():  # its socket listens (not only exists)
            assert agent.poll() is None, f"the agent exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the agent did not start:\n{log.read_text()}"
            time.sleep(0.01)
        yield RunningAgent(str(socket_path), workdir, transfer_disk)
    finally:
        left = _marked_processes(marker)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.kill()
        agent.wait()
    assert not left, f"processes the tests started outlived them: {left}"


async def connected(running_agent: RunningAgent, transfer_disk: bool = False) -> AgentClient:
    """A host connection; with ``transfer_disk``, one that moves large files on it."""
    disk = running_agent.transfer_disk if transfer_disk else None
    client = AgentClient("test agent", transfer_disk=disk)
    await asyncio.wait_for(client.connect(running_agent.socket_path), 10)
    return client


@pytest.fixture
async def agent(running_agent: RunningAgent) -> AsyncIterator[AgentClient]:
    client = await connected(running_agent)
    yield client
    await client.close()


@dataclass
class Outcome:
    result: dict[str, Any]
    output: dict[str, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def out(self, stream: str = "stdout") -> bytes:
        return self.output.get(stream, b"")


async def finish(call: AgentCall) -> Outcome:
    """Everything a call still sends, then its result (or its error, raised)."""
    outcome = Outcome({})
    async for item in call:
        if isinstance(item, Chunk):
            outcome.output[item.stream] = outcome.out(item.stream) + item.data
        else:
            outcome.events.append(item)
    outcome.result = await call.result()
    return outcome


async def run(client: AgentClient, request: m.Request, body: bytes | None = None) -> Outcome:
    call = client.start(request)
    if request.has_body:
        await call.send(body or b"")
        await call.end()
    return await asyncio.wait_for(finish(call), 10)


async def first_event(call: AgentCall) -> Event:
    async for item in call:
        if isinstance(item, Event):
            return item
    raise AssertionError("the call ended without an event")


async def stdout_until(call: AgentCall, expected: bytes) -> None:
    received = b""
    async for item in call:
        if isinstance(item, Chunk):
            received += item.data
            if received == expected:
                return
    raise AssertionError(f"the call ended after {received!r}, before {expected!r}")


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


async def start_background(client: AgentClient, **exec_fields: Any) -> int:
    started = await client.request(m.Exec(background=True, **exec_fields))
    return int(started["pid"])


class RawHost:
    """The host's end frame by frame, with no flow control of its own: it grants only what a test says.

    A task reads whatever arrives into a buffer, so that no wait with a deadline can drop bytes.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._received = bytearray()
        self._arrived = asyncio.Event()
        self._ended = False
        self._reading = asyncio.create_task(self._read_all(reader))
        self._decoder = FrameDecoder()
        self._frames: deque[Frame] = deque()
        self._next_stream = 0

    async def sync(self) -> None:
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.write(HOST_SYNC_MAGIC + nonce)
        answer, deadline = AGENT_SYNC_MAGIC + nonce, time.monotonic() + 5
        while answer not in self._received:
            await self._more(deadline, "the sync answer")
        rest = bytes(self._received).split(answer, 1)[1]
        self._received.clear()
        self._decoder = FrameDecoder()
        self._frames = deque(self._decoder.feed(rest))

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def request(self, request: m.Request) -> int:
        self._next_stream += 1
        self.write(encode_message(self._next_stream, request.to_message()))
        return self._next_stream

    async def frame(self) -> Frame:
        deadline = time.monotonic() + 5
        self._decode()
        while not self._frames:
            await self._more(deadline, "a frame")
            self._decode()
        return self._frames.popleft()

    async def frames_within(self, seconds: float) -> list[Frame]:
        """Every frame that arrives in the next ``seconds``."""
        await asyncio.sleep(seconds)
        self._decode()
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def message(self, stream_id: int) -> dict[str, Any]:
        """The next message on ``stream_id`` or on the connection itself (stream 0)."""
        while True:
            frame = await self.frame()
            if frame.kind == FrameKind.MESSAGE and frame.stream_id in (stream_id, 0):
                return frame.json()

    async def answer(self, request: m.Request) -> dict[str, Any]:
        stream_id = self.request(request)
        while (message := await self.message(stream_id))["type"] == "event":
            pass
        return message

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)

    async def _read_all(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(1 << 20):
            self._received += data
            self._arrived.set()
        self._ended = True
        self._arrived.set()

    async def _more(self, deadline: float, what: str) -> None:
        """Until more bytes arrive; fails at ``deadline`` or if the agent closed the connection."""
        assert not self._ended, f"the agent closed the connection while the host waited for {what}"
        self._arrived.clear()
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} came") from None

    def _decode(self) -> None:
        if self._received:
            self._frames.extend(self._decoder.feed(bytes(self._received)))
            self._received.clear()


@pytest.fixture
async def raw_host(running_agent: RunningAgent) -> AsyncIterator[RawHost]:
    host = RawHost(*await asyncio.open_unix_connection(running_agent.socket_path))
    try:
        await host.sync()
        yield host
    finally:
        await host.close()


async def serves_after_a_new_sync(host: RawHost) -> None:
    await host.sync()
    answer = await host.answer(m.Ping())
    assert answer["type"] == "result" and answer["result"]["version"] == m.PROTOCOL_VERSION


# ---------------------------------------------------------------- the session


async def test_requests_on_one_connection_run_at_once_and_answer_independently(agent):
    waiting = agent.start(m.Exec(argv=["cat"], stdin=True))  # answers once its stdin ends
    pid = (await first_event(waiting)).data["pid"]
    answers = await asyncio.wait_for(
        asyncio.gather(*(agent.request(m.Ping()) for _ in range(10)), agent.request(m.FileStat(path="."))),
        5,
    )
    assert {answer["version"] for answer in answers[:-1]} == {m.PROTOCOL_VERSION}
    assert answers[-1]["type"] == "dir" and not waiting.finished
    await agent.request(m.ProcInput(pid=pid, eof=True), body=b"mine")
    outcome = await asyncio.wait_for(finish(waiting), 5)
    assert outcome.out() == b"mine" and outcome.result["exit_code"] == 0


async def test_output_stops_at_the_window_and_resumes_with_each_grant(raw_host):
    total = INITIAL_WINDOW + 2 * MIB
    stream_id = raw_host.request(m.Exec(argv=["head", "-c", str(total), "/dev/zero"]))
    received = 0
    while received < INITIAL_WINDOW:
        frame = await raw_host.frame()
        if frame.kind == FrameKind.STDOUT:
            received += len(frame.payload)
    late = await raw_host.frames_within(0.1)
    assert received == INITIAL_WINDOW and late == []
    raw_host.write(encode_credit(stream_id, MIB))
    while received < INITIAL_WINDOW + MIB:
        frame = await raw_host.frame()
        assert frame.kind == FrameKind.STDOUT
        received += len(frame.payload)
    late = await raw_host.frames_within(0.1)
    assert received == INITIAL_WINDOW + MIB and late == []
    raw_host.write(encode_credit(stream_id, INITIAL_WINDOW))  # everything it spent so far
    while (frame := await raw_host.frame()).kind == FrameKind.STDOUT:
        received += len(frame.payload)
    assert frame.json()["result"]["exit_code"] == 0 and received == total


async def test_credit_the_agent_never_spent_is_a_protocol_error_and_the_next_sync_serves(
    raw_host, running_agent
):
    stream_id = raw_host.request(m.FileWrite(path="credit.txt"))  # waits for its body
    raw_host.write(encode_frame(FrameKind.DATA, stream_id, b"partial"))
    raw_host.write(encode_credit(stream_id, 1))
    error = await raw_host.message(stream_id)
    assert error["code"] == ErrorCode.PROTOCOL_ERROR and "credit" in error["message"]
    await serves_after_a_new_sync(raw_host)  # and the upload it cut left nothing behind
    assert not [name for name in os.listdir(running_agent.workdir) if "credit.txt" in name]


async def test_a_host_that_overruns_the_body_window_is_a_protocol_error(raw_host):
    started = await raw_host.answer(m.Exec(argv=["sleep", "30"], stdin=True, background=True))
    pid = started["result"]["pid"]  # it never reads its stdin: the agent holds what the host sends
    stream_id = raw_host.request(m.ProcInput(pid=pid))
    chunk = encode_frame(FrameKind.DATA, stream_id, b"i" * DATA_CHUNK_BYTES)
    raw_host.write(chunk * (INITIAL_WINDOW // DATA_CHUNK_BYTES + 2))
    error = await raw_host.message(stream_id)
    assert error["code"] == ErrorCode.PROTOCOL_ERROR and "flow-control window" in error["message"]
    await serves_after_a_new_sync(raw_host)
    assert (await raw_host.answer(m.ProcSignal(pid=pid)))["type"] == "result"
    ended = await raw_host.answer(m.ProcAttach(pid=pid, replay=False))
    assert ended["result"]["signal"] == signal.SIGKILL


async def test_a_frame_of_unknown_kind_is_a_protocol_error_until_the_next_sync(raw_host):
    raw_host.write(HEADER.pack(5, 99, 1))
    error = await raw_host.message(1)
    assert error["code"] == ErrorCode.PROTOCOL_ERROR and "kind 99" in error["message"]
    await serves_after_a_new_sync(raw_host)


async def test_a_sync_in_the_middle_of_a_frame_starts_a_clean_session(raw_host):
    raw_host.write(HEADER.pack(5 + 100, FrameKind.MESSAGE, 1) + b'{"op": "pi')  # 90 bytes short
    await serves_after_a_new_sync(raw_host)


async def test_a_cancelled_request_answers_cancelled_and_the_process_runs_on(raw_host):
    stream_id = raw_host.request(m.Exec(argv=["sleep", "30"]))
    pid = (await raw_host.message(stream_id))["data"]["pid"]
    raw_host.write(encode_frame(FrameKind.CANCEL, stream_id))
    answer = await raw_host.message(stream_id)
    assert answer["type"] == "error" and answer["code"] == ErrorCode.CANCELLED
    listing = (await raw_host.answer(m.ProcList()))["result"]["processes"]
    assert [process["running"] for process in listing if process["pid"] == pid] == [True]
    await raw_host.answer(m.ProcSignal(pid=pid))
    assert (await raw_host.answer(m.ProcAttach(pid=pid)))["result"]["signal"] == signal.SIGKILL


async def test_a_request_cancelled_before_it_ran_answers_cancelled_and_frees_its_stream(raw_host):
    # Both frames in one write: the agent reads them together, before the request's task runs.
    raw_host._next_stream += 1
    stream_id = raw_host._next_stream
    request = encode_message(stream_id, m.Exec(argv=["true"]).to_message())
    raw_host.write(request + encode_frame(FrameKind.CANCEL, stream_id))
    answer = await raw_host.message(stream_id)
    assert answer["type"] == "error" and answer["code"] == ErrorCode.CANCELLED
    raw_host.write(encode_message(stream_id, m.Ping().to_message()))  # the stream id is free again
    assert (await raw_host.message(stream_id))["type"] == "result"


async def test_a_process_outlives_its_host_and_a_new_host_replays_its_output(running_agent):
    first = await connected(running_agent)
    call = first.start(m.Exec(argv=["cat"], stdin=True))
    pid = (await first_event(call)).data["pid"]
    await first.request(m.ProcInput(pid=pid), body=b"before\n")
    await stdout_until(call, b"before\n")
    await first.close()  # mid-stream: the exec call is still streaming
    second = await connected(running_agent)
    try:
        await second.request(m.ProcInput(pid=pid, eof=True), body=b"after\n")
        outcome = await run(second, m.ProcAttach(pid=pid, replay=True))
        assert outcome.out() == b"before\nafter\n"
        assert outcome.result["exit_code"] == 0 and not outcome.result["truncated"]
        again = await run(second, m.ProcAttach(pid=pid, replay=False))
        assert again.out() == b"" and again.result["exit_code"] == 0
    finally:
        await second.close()


# ---------------------------------------------------------------- processes


async def test_a_command_streams_both_outputs_and_reports_its_exit_code(agent):
    outcome = await run(agent, m.Exec(cmd="printf out; printf err >&2; exit 3"))
    assert (outcome.out("stdout"), outcome.out("stderr")) == (b"out", b"err")
    assert [event.name for event in outcome.events] == ["started"]
    assert outcome.result["exit_code"] == 3 and outcome.result["signal"] is None
    assert not outcome.result["timed_out"]


async def test_a_background_process_keeps_its_output_for_a_later_attach(agent):
    pid = await start_background(agent, cmd="printf hello; printf there >&2", tag="kept")
    outcome = await run(agent, m.ProcAttach(pid=pid, replay=True))
    assert (outcome.out("stdout"), outcome.out("stderr")) == (b"hello", b"there")
    listing = (await agent.request(m.ProcList()))["processes"]
    assert [(p["tag"], p["running"], p["exit_code"]) for p in listing if p["pid"] == pid] == [
        ("kept", False, 0)
    ]


async def test_output_nobody_reads_is_kept_up_to_the_buffer_and_a_replay_gives_its_tail(agent):
    # The agent keeps the last 1 MiB of each stream (plus at most one 1 MiB read) while nobody
    # reads; at its exit at most its pipe's 1 MiB is still to be read.
    total = 5 * MIB + 3
    pid = await start_background(agent, cmd=f"head -c {total - 3} /dev/zero; printf END")

    async def exited() -> bool:
        listing = (await agent.request(m.ProcList()))["processes"]
        return not next(p for p in listing if p["pid"] == pid)["running"]

    while not await exited():
        await asyncio.sleep(0.01)
    outcome = await run(agent, m.ProcAttach(pid=pid, replay=True))
    assert MIB <= len(outcome.out()) <= 3 * MIB + 3 < total and outcome.out().endswith(b"\0END")
    assert outcome.result["exit_code"] == 0


@contextlib.asynccontextmanager
async def piped_process() -> AsyncIterator[tuple[ManagedProcess, int]]:
    """A ``ManagedProcess`` in this process over a pipe the test writes (no child: no reaping
    here); the pump reads what the pipe holds in one read, up to 1 MiB."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    owner = types.SimpleNamespace(pid=os.getpid(), returncode=None)
    process = ManagedProcess(owner, ["pump"], None, "/", None, {"stdout": read_fd}, None, False, True)  # type: ignore[arg-type]
    os.set_blocking(write_fd, False)
    try:
        yield process, write_fd
    finally:
        for reader in list(process._subscriptions):
            process.unsubscribe(reader)
        os.close(write_fd)
        await eventually(lambda: process.buffers["stdout"].closed, "the pump saw the pipe end")


async def test_a_reader_behind_loses_no_output_however_large_a_read_of_the_pipe():
    async with piped_process() as (process, pipe):
        reader, buffer = process.subscribe(replay=True), process.buffers["stdout"]
        os.write(pipe, b"a" * 300_000)
        await eventually(lambda: buffer.end == 300_000, "the pump read the first write")
        written = os.write(pipe, b"b" * OUTPUT_BUFFER_BYTES)  # at once, before the pump wakes
        await eventually(lambda: buffer.end > 300_000, "the pump read again")
        lost, data = buffer.read(reader.offsets["stdout"], 2 * OUTPUT_BUFFER_BYTES)
        assert lost == 0 and data.startswith(b"a" * 300_000)
        process.unsubscribe(reader)  # the pump goes on to the end of the pipe
        await eventually(lambda: buffer.end == 300_000 + written, "the pump read the rest")


async def test_a_process_is_not_finished_while_a_reader_holds_its_output_back():
    async with piped_process() as (process, pipe):
        reader, buffer = process.subscribe(replay=True), process.buffers["stdout"]
        os.write(pipe, b"x" * OUTPUT_BUFFER_BYTES)
        await eventually(lambda: buffer.end == OUTPUT_BUFFER_BYTES, "the pump filled the buffer")
        os.write(pipe, b"tail")  # waits in the pipe: the pump is paused for the reader
        process.on_exit(0)
        await asyncio.sleep(EXIT_DRAIN_S + 0.1)
        assert process.state is ProcessState.EXITED and not process.finished
        reader.offsets["stdout"] = buffer.end  # the reader took it all
        process.resume_output()
        await eventually(lambda: buffer.end == OUTPUT_BUFFER_BYTES + 4, "the pump read the tail")


async def test_a_command_past_its_output_limit_is_cut_and_runs_to_its_end(agent):
    outcome = await run(agent, m.Exec(argv=["head", "-c", "100000", "/dev/zero"], max_output_bytes=1000))
    assert len(outcome.out()) == 1000
    assert outcome.result["truncated"] and outcome.result["exit_code"] == 0


async def test_stdin_reaches_the_process_and_its_end_closes_it(agent):
    pid = await start_background(agent, argv=["sh", "-c", "tr a-z A-Z; echo done"], stdin=True)
    await agent.request(m.ProcInput(pid=pid), body=b"first ")
    await agent.request(m.ProcInput(pid=pid, eof=True), body=b"second\n" * 20_000)
    outcome = await run(agent, m.ProcAttach(pid=pid))
    assert outcome.out() == b"FIRST " + b"SECOND\n" * 20_000 + b"done\n"
    with pytest.raises(errors.InvalidRequestError, match="no open stdin"):
        await agent.request(m.ProcInput(pid=pid), body=b"late")


async def test_a_signal_ends_a_process_and_its_exit_says_which(agent):
    pid = await start_background(agent, argv=["sleep", "30"])
    await agent.request(m.ProcSignal(pid=pid, signal="TERM"))
    ended = (await run(agent, m.ProcAttach(pid=pid))).result
    assert (ended["exit_code"], ended["signal"], ended["timed_out"]) == (
        128 + signal.SIGTERM,
        signal.SIGTERM,
        False,
    )


async def test_a_process_past_its_timeout_is_killed_and_says_so(agent):
    started = time.monotonic()
    ended = (await run(agent, m.Exec(argv=["sleep", "30"], timeout_s=0.2))).result
    assert (ended["exit_code"], ended["signal"], ended["timed_out"]) == (
        128 + signal.SIGKILL,
        signal.SIGKILL,
        True,
    )
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- files


async def test_a_file_is_written_and_read_back_streamed_across_many_windows(agent, running_agent):
    content = os.urandom(2 * INITIAL_WINDOW + 12345)  # the upload waits for credit twice
    written = await agent.request(m.FileWrite(path="streamed/blob.bin", mode=0o640), body=content)
    assert (written["type"], written["size"], written["mode"]) == ("file", len(content), 0o640)
    assert (running_agent.workdir / "streamed" / "blob.bin").read_bytes() == content
    whole = await run(agent, m.FileRead(path="streamed/blob.bin"))
    assert whole.out("data") == content and whole.result["size"] == len(content)
    assert [event.name for event in whole.events] == ["info"]
    part = await run(agent, m.FileRead(path="streamed/blob.bin", offset=1000, length=300_000))
    assert part.out("data") == content[1000:301_000]
    await agent.request(m.FileWrite(path="streamed/blob.bin", append=True), body=b"tail")
    assert (running_agent.workdir / "streamed" / "blob.bin").read_bytes() == content + b"tail"


async def read_all(client: AgentClient, request: m.FileRead) -> bytes:
    lane = client.transfer_lane()
    request.extents = lane is not None
    outcome = await asyncio.wait_for(finish(client.start(request, lane)), 30)
    return outcome.out("data")


async def test_a_large_file_moves_on_the_transfer_disk_both_ways_which_ends_empty(running_agent):
    content = os.urandom(3 * SLOT_BYTES + 12345)  # full extents and a short last one
    host = await connected(running_agent, transfer_disk=True)
    try:
        frames: list[FrameKind] = []
        write = host._write_nowait
        host._write_nowait = lambda frame: frames.append(FrameKind(frame[4])) or write(frame)  # type: ignore[method-assign]
        await host.request(m.FileWrite(path="disk/blob.bin"), body=content)
        assert FrameKind.EXTENT in frames and FrameKind.DATA not in frames
        assert (running_agent.workdir / "disk" / "blob.bin").read_bytes() == content
        assert await read_all(host, m.FileRead(path="disk/blob.bin")) == content
        part = await read_all(host, m.FileRead(path="disk/blob.bin", offset=5000, length=2 * SLOT_BYTES))
        assert part == content[5000 : 5000 + 2 * SLOT_BYTES]
        # A streamed body, and an append (which goes through the page cache).
        chunks = [content[i : i + 65536] for i in range(0, len(content), 65536)]

        async def stream():
            for chunk in chunks:
                yield chunk

        await host.request(m.FileWrite(path="disk/blob.bin", append=True), body=stream())
        assert await read_all(host, m.FileRead(path="disk/blob.bin")) == content * 2
        # Every lane is free again, and the disk's pages were given back.
        assert [host.transfer_lane() for _ in range(LANES + 1)][-1] is None
        assert os.stat(running_agent.transfer_disk).st_blocks == 0
    finally:
        await host.close()


async def test_small_files_and_busy_lanes_go_through_the_channel(running_agent):
    host = await connected(running_agent, transfer_disk=True)
    try:
        lanes = [host.transfer_lane() for _ in range(LANES)]  # every lane taken
        content = os.urandom(2 * SLOT_BYTES)
        await host.request(m.FileWrite(path="busy.bin"), body=content)
        assert await read_all(host, m.FileRead(path="busy.bin")) == content
        for lane in lanes:
            lane.release()
        await host.request(m.FileWrite(path="small.bin"), body=b"small")
        assert await read_all(host, m.FileRead(path="small.bin")) == b"small"
    finally:
        await host.close()


@pytest.mark.parametrize("on_disk", [False, True], ids=["channel", "transfer_disk"])
@pytest.mark.parametrize("change", ["grows", "shrinks"])
async def test_a_download_gives_the_size_seen_at_open_or_io_error_if_the_file_shrank(
    running_agent, change, on_disk
):
    content = os.urandom(16 * MIB)
    target = running_agent.workdir / f"changing-{change}-{on_disk}.bin"
    target.write_bytes(content)
    host = await connected(running_agent, transfer_disk=on_disk)
    try:
        lane = host.transfer_lane()
        call = host.start(m.FileRead(path=target.name, extents=lane is not None), lane)
        # The agent runs at most a window (4 MiB) or a lane (8 MiB) ahead of this reader.
        first = b""
        while not first:
            item = await asyncio.wait_for(anext(aiter(call)), 10)
            first = item.data if isinstance(item, Chunk) else b""
        with target.open("r+b") as file:
            if change == "grows":
                file.seek(0, os.SEEK_END)
                file.write(b"written after the download began")
            else:
                file.truncate(12 * MIB)
        if change == "grows":
            outcome = await asyncio.wait_for(finish(call), 30)
            assert first + outcome.out("data") == content
        else:
            with pytest.raises(errors.IOError, match="shrank while it was read"):
                await asyncio.wait_for(finish(call), 30)
        assert await run(host, m.Ping())  # the connection serves on
    finally:
        await host.close()


async def test_a_replaced_file_keeps_its_mode(agent, running_agent):
    target = running_agent.workdir / "keeps-mode.sh"
    target.write_bytes(b"old")
    target.chmod(0o751)
    info = await agent.request(m.FileWrite(path="keeps-mode.sh"), body=b"new")
    assert info["mode"] == 0o751 and target.read_bytes() == b"new"


def _upload_leftovers(directory: Path, name: str) -> list[str]:
    return [entry for entry in os.listdir(directory) if entry.startswith(f".{name}.ember-")]


@pytest.mark.parametrize("on_disk", [False, True], ids=["channel", "transfer_disk"])
@pytest.mark.parametrize("cut", ["cancelled", "host_left"])
async def test_an_upload_cut_short_keeps_the_old_content_and_no_temporary_file(running_agent, cut, on_disk):
    name = f"{cut}-{on_disk}.txt"
    target = running_agent.workdir / name
    target.write_bytes(b"old content")
    host = await connected(running_agent, transfer_disk=on_disk)
    try:
        call = host.start(m.FileWrite(path=name), host.transfer_lane())
        await call.send_body(b"new" * 1_000_000)
        await eventually(lambda: _upload_leftovers(running_agent.workdir, name), "the upload began")
        await (call.cancel() if cut == "cancelled" else host.close())
        await eventually(lambda: not _upload_leftovers(running_agent.workdir, name), "it was removed")
        assert target.read_bytes() == b"old content"
    finally:
        await host.close()


async def test_directories_are_made_listed_renamed_and_removed(agent, running_agent):
    made = await agent.request(m.FileMkdir(path="tree/a/b", parents=True))
    assert made["type"] == "dir" and made["path"] == str(running_agent.workdir / "tree/a/b")
    await agent.request(m.FileWrite(path="tree/a/b/leaf.txt"), body=b"leaf")
    assert (await agent.request(m.FileMkdir(path="tree/a", exist_ok=True)))["type"] == "dir"
    listing = await agent.request(m.FileList(path="tree", depth=3))
    assert sorted(entry["name"] for entry in listing["entries"]) == ["a", "b", "leaf.txt"]
    renamed = await agent.request(m.FileRename(source="tree/a", destination="tree/c"))
    assert renamed["name"] == "c" and (running_agent.workdir / "tree/c/b/leaf.txt").read_bytes() == b"leaf"
    await agent.request(m.FileWrite(path="tree/other.txt"), body=b"other")
    await agent.request(
        m.FileRename(source="tree/other.txt", destination="tree/c/b/leaf.txt", overwrite=True)
    )
    assert (running_agent.workdir / "tree/c/b/leaf.txt").read_bytes() == b"other"
    await agent.request(m.FileRemove(path="tree/c/b/leaf.txt"))
    await agent.request(m.FileRemove(path="tree", recursive=True))
    assert not (running_agent.workdir / "tree").exists()


@pytest.fixture
def error_tree(running_agent: RunningAgent) -> Iterator[None]:
    root = running_agent.workdir / "errors"
    (root / "full").mkdir(parents=True)
    (root / "full" / "x").write_bytes(b"x")
    (root / "file.txt").write_bytes(b"file")
    (root / "other.txt").write_bytes(b"other")
    yield
    subprocess.run(["rm", "-rf", str(root)], check=True)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (m.FileRead(path="errors/missing"), ErrorCode.FILE_NOT_FOUND),
        (m.FileRead(path="errors"), ErrorCode.IS_A_DIRECTORY),
        (m.FileRead(path="errors/file.txt", offset=-1), ErrorCode.INVALID_REQUEST),
        (m.FileStat(path="errors/a\0b"), ErrorCode.INVALID_REQUEST),
        (m.FileStat(path="errors/" + "n" * 4100), ErrorCode.INVALID_REQUEST),
        (m.FileList(path="errors/missing"), ErrorCode.FILE_NOT_FOUND),
        (m.FileList(path="errors/file.txt"), ErrorCode.NOT_A_DIRECTORY),
        (m.FileList(path="errors", depth=0), ErrorCode.INVALID_REQUEST),
        (m.FileMkdir(path="errors/file.txt"), ErrorCode.ALREADY_EXISTS),
        (m.FileMkdir(path="errors/full", exist_ok=False), ErrorCode.ALREADY_EXISTS),
        (m.FileMkdir(path="errors/no/parent", parents=False), ErrorCode.FILE_NOT_FOUND),
        (m.FileMkdir(path="errors/file.txt/below", parents=True), ErrorCode.NOT_A_DIRECTORY),
        (m.FileRemove(path="errors/missing"), ErrorCode.FILE_NOT_FOUND),
        (m.FileRemove(path="errors/full"), ErrorCode.DIRECTORY_NOT_EMPTY),
        (m.FileRename(source="errors/missing", destination="errors/y"), ErrorCode.FILE_NOT_FOUND),
        (
            m.FileRename(source="errors/file.txt", destination="errors/other.txt", overwrite=False),
            ErrorCode.ALREADY_EXISTS,
        ),
        (m.FileWrite(path="errors/full"), ErrorCode.IS_A_DIRECTORY),
        (m.FileWrite(path="errors/file.txt/below", make_parents=False), ErrorCode.NOT_A_DIRECTORY),
        (m.FileWrite(path="errors/moded", mode=0o10000), ErrorCode.INVALID_REQUEST),
        (m.Exec(argv=["errors/not-a-program"]), ErrorCode.EXEC_FAILED),
        (m.Exec(cmd="true", cwd="errors/missing"), ErrorCode.NOT_A_DIRECTORY),
        (m.Exec(cmd="true", argv=["true"]), ErrorCode.INVALID_REQUEST),
        (m.Exec(cmd="true", env={"A=B": "x"}), ErrorCode.INVALID_REQUEST),
        (m.Exec(cmd="true", timeout_s=0), ErrorCode.INVALID_REQUEST),
        (m.ProcAttach(pid=2**31 - 1), ErrorCode.PROCESS_NOT_FOUND),
        (m.ProcSignal(pid=2**31 - 1, signal="SIGTERM"), ErrorCode.PROCESS_NOT_FOUND),
        (m.ProcSignal(pid=2**31 - 1, signal="SIGNOPE"), ErrorCode.INVALID_REQUEST),
    ],
    ids=lambda value: value.op if isinstance(value, m.Request) else None,
)
async def test_bad_requests_get_their_error_code_and_change_nothing(
    agent, running_agent, error_tree, request_, code
):
    before = sorted(str(path.relative_to(running_agent.workdir)) for path in running_agent.workdir.rglob("*"))
    with pytest.raises(errors.EmberError) as caught:
        await run(agent, request_, b"body")
    assert caught.value.code == code, caught.value.message
    after = sorted(str(path.relative_to(running_agent.workdir)) for path in running_agent.workdir.rglob("*"))
    assert after == before
    assert (running_agent.workdir / "errors" / "file.txt").read_bytes() == b"file"


# ---------------------------------------------------------------- the host's client of it


async def test_a_client_refuses_to_open_over_its_live_connection(agent, running_agent):
    with pytest.raises(RuntimeError, match="connected to opening"):
        await agent.open(running_agent.socket_path)
    assert agent.state is ChannelState.CONNECTED
    assert (await agent.request(m.Ping()))["version"] == m.PROTOCOL_VERSION


async def test_a_sync_nobody_answers_can_be_given_up_and_the_client_connects_again(running_agent, tmp_path):
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)  # connects, never answers
    client = AgentClient("test agent")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.connect(str(tmp_path / "silent.sock")), 0.3)
        assert client.state is ChannelState.FAILED and client.closed.is_set()
        with pytest.raises(errors.AgentUnavailableError, match="abandoned"):
            client.start(m.Ping())
        await client.connect(running_agent.socket_path)
        assert client.state is ChannelState.CONNECTED and not client.closed.is_set()
        assert (await client.request(m.Ping()))["version"] == m.PROTOCOL_VERSION
    finally:
        await client.close()
        silent.close()
    assert client.state is ChannelState.CLOSED and client.closed.is_set()
    with pytest.raises(errors.AgentUnavailableError, match="closed"):
        client.start(m.Ping())
