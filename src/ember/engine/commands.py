"""Processes and terminals in a sandbox (``sandbox.commands`` and ``sandbox.pty``)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ember.engine.calls import OutputCallback, OutputCollector, drive
from ember.engine.channel import AgentCall, Chunk
from ember.protocol import messages as m

if TYPE_CHECKING:
    from ember.engine.sandbox import Sandbox

DEFAULT_PTY_COMMAND = ("bash", "-l")


class Commands:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def run(
        self,
        cmd: str | list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        stdin: bool = False,
        max_output_bytes: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_start: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> m.ProcessExit:
        """Run to completion; a string runs under ``bash -c``, a list as argv."""
        request = _exec(cmd, env=env, cwd=cwd, user=user, timeout_s=timeout_s, stdin=stdin)
        request.max_output_bytes = max_output_bytes

        async def started(event: object) -> None:
            if on_start is not None and getattr(event, "name", None) == "started":
                result = on_start(int(event.data["pid"]))  # type: ignore[attr-defined]
                if inspect.isawaitable(result):
                    await result

        collector = OutputCollector(on_stdout, on_stderr, on_event=started)
        async with self._sandbox.agent_call() as agent:
            result = await drive(agent, request, collector.drain, timeout_s)
        return _finished(result, collector)

    async def start(
        self,
        cmd: str | list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        stdin: bool = False,
        tag: str | None = None,
    ) -> int:
        """Start in the background; returns the pid. Output waits in the guest for ``attach``."""
        request = _exec(cmd, env=env, cwd=cwd, user=user, timeout_s=timeout_s, stdin=stdin)
        request.background = True
        request.tag = tag
        async with self._sandbox.agent_call() as agent:
            return m.ProcessStarted.from_wire(await agent.request(request)).pid

    async def attach(
        self,
        pid: int,
        *,
        replay: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> m.ProcessExit:
        """Follow a process (first what its buffers still hold) until it exits."""
        collector = OutputCollector(on_stdout, on_stderr)
        async with self._sandbox.agent_call() as agent:
            result = await drive(agent, m.ProcAttach(pid=pid, replay=replay), collector.drain)
        return _finished(result, collector)

    async def follow(
        self,
        pid: int,
        on_output: Callable[[str, bytes], Awaitable[None] | None],
        *,
        replay: bool = True,
    ) -> m.ProcessExit:
        """Deliver a process's raw output (``on_output(stream, bytes)``) until it exits."""

        async def deliver(call: AgentCall) -> m.ProcessExit:
            async for item in call:
                if isinstance(item, Chunk):
                    result = on_output(item.stream, item.data)
                    if inspect.isawaitable(result):
                        await result
            return m.ProcessExit.from_wire(await call.result())

        async with self._sandbox.agent_call() as agent:
            return await drive(agent, m.ProcAttach(pid=pid, replay=replay), deliver)

    async def list(self) -> list[m.ProcessInfo]:
        async with self._sandbox.agent_call() as agent:
            return m.ProcessListing.from_wire(await agent.request(m.ProcList())).processes

    async def send_stdin(self, pid: int, data: bytes, *, eof: bool = False) -> None:
        async with self._sandbox.agent_call() as agent:
            await agent.request(m.ProcInput(pid=pid, eof=eof), data)

    async def kill(self, pid: int, signal: str = "SIGKILL", *, group: bool = True) -> None:
        async with self._sandbox.agent_call() as agent:
            await agent.request(m.ProcSignal(pid=pid, signal=signal, group=group))


class Pty:
    """Terminals: raw bytes both ways, resizable."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def create(
        self,
        cmd: str | list[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
    ) -> int:
        request = _exec(cmd or list(DEFAULT_PTY_COMMAND), env=env, cwd=cwd, user=user, timeout_s=timeout_s)
        request.login_shell = cmd is None  # the image's shell: bash, else sh
        request.background = True
        request.pty = m.PtySize(cols=cols, rows=rows)
        async with self._sandbox.agent_call() as agent:
            return m.ProcessStarted.from_wire(await agent.request(request)).pid

    async def stream(
        self, pid: int, on_data: Callable[[bytes], Awaitable[None] | None], *, replay: bool = True
    ) -> m.ProcessExit:
        """Deliver the terminal's output bytes until its process exits."""
        return await self._sandbox.commands.follow(pid, lambda _stream, data: on_data(data), replay=replay)

    async def send(self, pid: int, data: bytes) -> None:
        await self._sandbox.commands.send_stdin(pid, data)

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        async with self._sandbox.agent_call() as agent:
            await agent.request(m.ProcResize(pid=pid, size=m.PtySize(cols=cols, rows=rows)))


def _exec(
    cmd: str | list[str],
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    user: str | None,
    timeout_s: float | None,
    stdin: bool = False,
) -> m.Exec:
    if isinstance(cmd, str):
        return m.Exec(cmd=cmd, env=env, cwd=cwd, user=user, timeout_s=timeout_s, stdin=stdin)
    return m.Exec(argv=list(cmd), env=env, cwd=cwd, user=user, timeout_s=timeout_s, stdin=stdin)


def _finished(result: dict[str, object], collector: OutputCollector) -> m.ProcessExit:
    exit_info = m.ProcessExit.from_wire(result)
    exit_info.stdout, exit_info.stderr = collector.stdout, collector.stderr
    exit_info.truncated = exit_info.truncated or collector.truncated
    return exit_info
