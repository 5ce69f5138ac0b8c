"""``sandbox.pty``: interactive terminals over the daemon's WebSocket.

A ``AsyncTerminal`` reads in the background from the moment it opens: a task
(a thread in the sync SDK, so ``on_data`` runs on that thread) hands every chunk
of terminal output to ``on_data`` until the process exits. Without ``on_data``
the output is dropped. ``wait()`` returns the exit code; ``close()`` only
disconnects (the process keeps running and ``pty.connect(pid)`` reattaches),
``kill()`` ends the process.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from ember import errors
from ember.client._async.transport import AsyncTransport
from ember.client._backends import AsyncBackground, aemit
from ember.client._errors import error_from_event, error_from_response, unreachable
from ember.client._models import parse
from ember.protocol.messages import ProcessStarted

DataCallback = Callable[[bytes], Any]


class AsyncPty:
    def __init__(self, transport: AsyncTransport, sandbox_path: str) -> None:
        self._transport = transport
        self._sandbox_path = sandbox_path
        self._path = f"{sandbox_path}/pty"
        self._terminals: list[AsyncTerminal] = []

    async def create(
        self,
        cmd: str | None = None,
        cols: int = 80,
        rows: int = 24,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        on_data: DataCallback | None = None,
    ) -> AsyncTerminal:
        """Start `cmd` (default: a login bash) on a new terminal of `cols` x `rows` and attach to it."""
        body = {"cmd": cmd, "cols": cols, "rows": rows, "env": env, "cwd": cwd, "user": user}
        started = parse(ProcessStarted, await self._transport.json("POST", self._path, json=body))
        return await self.connect(started.pid, on_data)

    async def connect(self, pid: int, on_data: DataCallback | None = None) -> AsyncTerminal:
        """Attach to a terminal process; the terminal first replays what it printed so far."""
        terminal = AsyncTerminal(self._transport, self._sandbox_path, pid, on_data)
        await terminal._open()
        self._terminals.append(terminal)
        return terminal

    async def _close_all(self) -> None:
        """Disconnect every terminal this object opened (the sandbox object is closing)."""
        while self._terminals:
            await self._terminals.pop().close()


class AsyncTerminal:
    """One terminal's WebSocket: send keystrokes, resize, wait for the exit code."""

    def __init__(
        self, transport: AsyncTransport, sandbox_path: str, pid: int, on_data: DataCallback | None
    ) -> None:
        self.pid = pid
        self.exit_code: int | None = None
        self._transport = transport
        self._sandbox_path = sandbox_path
        self._on_data = on_data
        self._error: errors.EmberError | None = None
        self._exits = contextlib.AsyncExitStack()

    async def _open(self) -> None:
        # websockets is imported with the first terminal: most programs never open one.
        import websockets.asyncio.client as ws_client
        from websockets.exceptions import InvalidStatus, WebSocketException

        config = self._transport.config
        url = "ws" + config.base_url.removeprefix("http") + f"{self._sandbox_path}/pty/{self.pid}"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        connecting = ws_client.connect(
            url, additional_headers=headers, open_timeout=config.request_timeout_s, max_size=None
        )
        try:
            # Entered as a context manager (what websockets asks of its sync client); close() exits it.
            self._socket = await self._exits.enter_async_context(connecting)
        except InvalidStatus as exc:
            answer = exc.response
            raise error_from_response(answer.status_code, answer.body or b"", answer.reason_phrase) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise unreachable(config.base_url, f"terminal connection failed: {exc}") from exc
        self._reader = AsyncBackground(self._read, name=f"ember-pty-{self.pid}")

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self._socket:
                if isinstance(message, bytes):
                    await aemit(self._on_data, message)
                    continue
                event = _control(message)
                if event.get("type") == "exit":
                    self.exit_code = event.get("exit_code")
                elif event.get("type") == "error":
                    self._error = error_from_event(event)
        except ConnectionClosed:
            # An abnormal close; wait() reports it when no exit code arrived first.
            return
        except errors.EmberError as exc:
            self._error = exc

    async def send(self, data: bytes | str) -> None:
        """Type into the terminal (text is sent as UTF-8)."""
        await self._send(data.encode() if isinstance(data, str) else data)

    async def resize(self, cols: int, rows: int) -> None:
        await self._send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def _send(self, message: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._socket.send(message)
        except ConnectionClosed as exc:
            raise errors.ProcessNotFoundError(
                f"terminal {self.pid} is closed (its process exited, or close() was called)"
            ) from exc

    async def wait(self, timeout: float | None = None) -> int:
        """Wait until the terminal's process exits and return its exit code.

        After ``timeout`` seconds it raises ``ExecTimeoutError`` instead; the terminal
        stays open and its process runs on.
        """
        if not await self._reader.join(timeout):
            raise errors.ExecTimeoutError(f"terminal {self.pid}: its process still runs after {timeout} s")
        if self._error is not None:
            raise self._error
        if self.exit_code is None:
            raise errors.ProtocolError(f"terminal {self.pid}: the connection ended before the process exited")
        return self.exit_code

    async def kill(self) -> None:
        """End the terminal's process (and its process group)."""
        path = f"{self._sandbox_path}/commands/{self.pid}/signal"
        await self._transport.request("POST", path, json={"signal": "SIGKILL"})

    async def close(self) -> None:
        """Disconnect; the process keeps running (``kill()`` ends it)."""
        await self._exits.aclose()
        await self._reader.join()

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _control(message: str) -> dict[str, Any]:
    try:
        event = json.loads(message)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise errors.ProtocolError(f"unexpected terminal control message: {message[:200]!r}")
    return event
