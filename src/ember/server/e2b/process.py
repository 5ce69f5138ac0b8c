"""E2B's process service (``/process.Process/*``) over Ember's commands and terminals.

Every process starts in the background in the guest and the call follows its
output, so that, as in E2B, a client that goes away leaves it running and
``Connect`` (by pid or tag) picks it up again.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ember.engine.sandbox import Sandbox
from ember.protocol import messages as m
from ember.server.e2b import connect
from ember.server.e2b.connect import ConnectError, Emit, Message
from ember.server.e2b.plane import sandbox_of, username, working_directory

SIGNALS = {"SIGNAL_SIGKILL": "SIGKILL", "SIGNAL_SIGTERM": "SIGTERM", 9: "SIGKILL", 15: "SIGTERM"}
_SIGNAL_NAMES = {9: "killed", 15: "terminated", 2: "interrupt", 1: "hangup"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _event(name: str, body: Message) -> Message:
    return {"event": {name: body}}


def end_event(result: m.ProcessExit) -> Message:
    """How E2B's envd reports an exit: a code, and a Go-style status text."""
    if result.signal is not None:
        status = f"signal: {_SIGNAL_NAMES.get(result.signal, str(result.signal))}"
        return _event("end", {"exitCode": -1, "exited": False, "status": status})
    code = result.exit_code if result.exit_code is not None else -1
    return _event("end", {"exitCode": code, "exited": True, "status": f"exit status {code}"})


async def _pid(box: Sandbox, selector: Any) -> int:
    """The pid a ``ProcessSelector`` names: ``{"pid": n}`` or ``{"tag": "..."}``."""
    if not isinstance(selector, dict):
        raise ConnectError("invalid_argument", "process selector missing")
    if "pid" in selector:
        pid = selector["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ConnectError("invalid_argument", "pid must be an integer")
        return pid
    tag = selector.get("tag")
    if not isinstance(tag, str):
        raise ConnectError("invalid_argument", "a process selector needs pid or tag")
    for process in await box.commands.list():
        if process.tag == tag and process.running:
            return process.pid
    raise ConnectError("not_found", f"no running process tagged {tag!r}")


async def _follow(box: Sandbox, pid: int, pty: bool, emit: Emit, *, replay: bool) -> None:
    async def output(stream: str, data: bytes) -> None:
        name = "pty" if pty else ("stderr" if stream == "stderr" else "stdout")
        await emit(_event("data", {name: _b64(data)}))

    await emit(_event("start", {"pid": pid}))
    await emit(end_event(await box.commands.follow(pid, output, replay=replay)))


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConnectError("invalid_argument", f"{what} must be a list of strings")
    return value


async def start(request: Request) -> Response:
    box = sandbox_of(request)
    message = await connect.first_message(request)
    config = message.get("process")
    if not isinstance(config, dict) or not isinstance(config.get("cmd"), str) or not config["cmd"]:
        raise ConnectError("invalid_argument", "process.cmd is required")
    argv = [config["cmd"], *_strings(config.get("args"), "process.args")]
    env = config.get("envs") or None
    user = username(request)
    cwd = working_directory(config.get("cwd"), user)
    # As envd does, a process started with a deadline (Connect-Timeout-Ms) is killed when it
    # passes, by the guest agent: a client that disconnects early does not keep it alive.
    deadline_s = connect.timeout_s(request)
    pty = message.get("pty")
    if pty is not None:
        size = pty.get("size") or {}
        cols, rows = int(size.get("cols", 80)), int(size.get("rows", 24))
        pid = await box.pty.create(
            argv, cols=cols, rows=rows, env=env, cwd=cwd, user=user, timeout_s=deadline_s
        )
    else:
        stdin, tag = bool(message.get("stdin", False)), message.get("tag")
        pid = await box.commands.start(
            argv, env=env, cwd=cwd, user=user, stdin=stdin, tag=tag, timeout_s=deadline_s
        )
    return connect.server_stream(
        lambda emit: _follow(box, pid, pty is not None, emit, replay=True), request, keepalive=_KEEPALIVE
    )


async def reconnect(request: Request) -> Response:
    box = sandbox_of(request)
    message = await connect.first_message(request)
    pid = await _pid(box, message.get("process"))
    terminal = any(p.pid == pid and p.pty for p in await box.commands.list())
    return connect.server_stream(
        lambda emit: _follow(box, pid, terminal, emit, replay=False), request, keepalive=_KEEPALIVE
    )


async def _list(box: Sandbox, message: Message) -> Message:
    processes = []
    for process in await box.commands.list():
        if not process.running:
            continue
        config = {"cmd": process.argv[0] if process.argv else "", "args": process.argv[1:], "envs": {}}
        config["cwd"] = process.cwd
        entry: Message = {"config": config, "pid": process.pid}
        if process.tag is not None:
            entry["tag"] = process.tag
        processes.append(entry)
    return {"processes": processes}


def _input(message: Message) -> bytes:
    data = message.get("stdin", message.get("pty"))
    if not isinstance(data, str):
        raise ConnectError("invalid_argument", "input needs stdin or pty bytes")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise ConnectError("invalid_argument", "input bytes are not base64") from None


async def _send_input(box: Sandbox, message: Message) -> Message:
    pid = await _pid(box, message.get("process"))
    await box.commands.send_stdin(pid, _input(message.get("input") or {}))
    return {}


async def stream_input(request: Request) -> Response:
    box = sandbox_of(request)

    async def run() -> Message:
        pid: int | None = None
        async for message in connect.read_envelopes(request):
            if "start" in message:
                pid = await _pid(box, (message["start"] or {}).get("process"))
            elif "data" in message:
                if pid is None:
                    raise ConnectError("invalid_argument", "input before the start message")
                await box.commands.send_stdin(pid, _input((message["data"] or {}).get("input") or {}))
        return {}

    return await connect.client_stream(request, run)


async def _send_signal(box: Sandbox, message: Message) -> Message:
    pid = await _pid(box, message.get("process"))
    if not any(p.pid == pid and p.running for p in await box.commands.list()):
        raise ConnectError("not_found", f"no running process {pid}")  # E2B's kill() then answers False
    signal = SIGNALS.get(message.get("signal"))  # type: ignore[arg-type]
    if signal is None:
        raise ConnectError("invalid_argument", f"unsupported signal {message.get('signal')!r}")
    await box.commands.kill(pid, signal)
    return {}


async def _close_stdin(box: Sandbox, message: Message) -> Message:
    await box.commands.send_stdin(await _pid(box, message.get("process")), b"", eof=True)
    return {}


async def _update(box: Sandbox, message: Message) -> Message:
    pid = await _pid(box, message.get("process"))
    size = (message.get("pty") or {}).get("size")
    if not isinstance(size, dict):
        raise ConnectError("invalid_argument", "update needs pty.size")
    await box.pty.resize(pid, int(size.get("cols", 80)), int(size.get("rows", 24)))
    return {}


_KEEPALIVE: Message = {"event": {"keepalive": {}}}
_PREFIX = "/process.Process/"
routes = [
    Route(_PREFIX + "Start", connect.streaming(start), methods=["POST"]),
    Route(_PREFIX + "Connect", connect.streaming(reconnect), methods=["POST"]),
    Route(_PREFIX + "StreamInput", connect.streaming(stream_input), methods=["POST"]),
    *connect.unary_routes(
        _PREFIX,
        {
            "List": _list,
            "SendInput": _send_input,
            "SendSignal": _send_signal,
            "CloseStdin": _close_stdin,
            "Update": _update,
        },
        sandbox_of,
    ),
]
