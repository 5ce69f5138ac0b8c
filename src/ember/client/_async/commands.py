"""``sandbox.commands``: shell commands in the foreground, streamed, or in the background.

A non-zero exit status is returned in ``CommandResult.exit_code``, never raised:
a failing command is an ordinary outcome for code that runs other code (E2B
raises here; Ember does not). Errors are raised only when the command could
not run or be reached (unknown pid, sandbox gone, ...).

Background processes keep running in the sandbox when this program goes away;
their output waits in bounded buffers, so ``commands.connect(pid)`` from any
process reattaches to them.
"""

from __future__ import annotations

import builtins
from typing import Literal, overload

from ember import errors
from ember.client._async.transport import AsyncTransport, TextCallback
from ember.client._backends import aiter_body
from ember.client._models import CommandResult, parse, parse_list
from ember.client._stream import result_of
from ember.protocol.messages import ProcessInfo, ProcessStarted


class AsyncCommands:
    def __init__(self, transport: AsyncTransport, sandbox_path: str) -> None:
        self._transport = transport
        self._path = f"{sandbox_path}/commands"

    @overload
    async def run(
        self,
        cmd: str,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | None = ...,
        timeout: float | None = ...,
        background: Literal[False] = ...,
        stdin: bool = ...,
        on_stdout: TextCallback | None = ...,
        on_stderr: TextCallback | None = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | None = ...,
        timeout: float | None = ...,
        *,
        background: Literal[True],
        stdin: bool = ...,
        on_stdout: TextCallback | None = ...,
        on_stderr: TextCallback | None = ...,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = 60,
        background: bool = False,
        stdin: bool = False,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """Run `cmd` with ``bash -c``; wait for it, or with ``background=True`` return a handle at once.

        `timeout` (seconds, None: no limit) kills the command when it runs longer.
        `stdin=True` keeps its stdin open for ``handle.send_stdin()`` (with background).
        With callbacks, output streams to them as it is printed; for a background
        command they become the defaults of ``handle.wait()``.
        """
        body = {"cmd": cmd, "env": env, "cwd": cwd, "user": user, "timeout": timeout}
        body.update(background=background, stdin=stdin)
        if background:
            started = parse(ProcessStarted, await self._transport.json("POST", self._path, json=body))
            return AsyncCommandHandle(self._transport, self._path, started.pid, on_stdout, on_stderr)
        if on_stdout is None and on_stderr is None:
            return parse(CommandResult, await self._transport.json("POST", self._path, json=body, waits=True))
        event, output = await self._transport.events(
            "POST", self._path, json=body, on_stdout=on_stdout, on_stderr=on_stderr
        )
        return parse(CommandResult, output.fill(result_of(event, "command")))

    async def list(self) -> builtins.list[ProcessInfo]:
        """Every process the sandbox's agent started (running or recently ended), terminals included."""
        return parse_list(ProcessInfo, await self._transport.json("GET", self._path), "processes")

    async def connect(
        self, pid: int, on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None
    ) -> AsyncCommandHandle:
        """A handle on a process started earlier (by this program or another one)."""
        if not any(process.pid == pid for process in await self.list()):
            raise errors.ProcessNotFoundError(f"no process with pid {pid} in this sandbox")
        return AsyncCommandHandle(self._transport, self._path, pid, on_stdout, on_stderr)


class AsyncCommandHandle:
    """A process running in the sandbox: wait for it, feed its stdin, signal it."""

    def __init__(
        self,
        transport: AsyncTransport,
        commands_path: str,
        pid: int,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
    ) -> None:
        self.pid = pid
        self._transport = transport
        self._path = f"{commands_path}/{pid}"
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr

    async def wait(
        self, on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None
    ) -> CommandResult:
        """Stream the output (first what the sandbox kept, then live) until the process exits.

        The result holds all of that output, whether or not callbacks were given.
        """
        event, output = await self._transport.events(
            "GET",
            self._path,
            on_stdout=on_stdout or self._on_stdout,
            on_stderr=on_stderr or self._on_stderr,
        )
        return parse(CommandResult, output.fill(result_of(event, "command")))

    async def send_stdin(self, data: bytes | str, eof: bool = False) -> None:
        """Write to the process's stdin (started with ``stdin=True``); `eof` closes it afterwards."""
        await self._transport.request(
            "POST", f"{self._path}/stdin", content=aiter_body(data), params={"eof": str(eof).lower()}
        )

    async def kill(self, signal: str = "SIGKILL") -> None:
        """Send `signal` (a name such as ``SIGTERM``) to the process's whole process group."""
        await self._transport.request("POST", f"{self._path}/signal", json={"signal": signal})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid}>"
