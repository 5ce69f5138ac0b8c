"""The daemon's end of the network services process (``ember.network.services``).

It starts the process on first use, through a launcher the engine gives it (the
jailer: an unprivileged uid, the host's network namespace, nothing else), and
sends it each sandbox's sockets and rules. It keeps its own copies of the
sockets: if the process dies, the next call starts it again and hands every
sandbox's sockets back, so ports, and the nftables rules that name them, stay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ember import errors

log = logging.getLogger("ember.network")

#: Starts ``argv`` with ``fds`` as its 1, 2, 3, ...; returns its pid.
Launcher = Callable[[list[str], list[int]], Awaitable[int]]
_REPLY_TIMEOUT_S = 10.0
_MAX_MESSAGE_BYTES = 1 << 16


@dataclass
class _Entry:
    sockets: tuple[socket.socket, socket.socket, socket.socket]
    message: dict[str, object]  # the latest serve, with the latest rules


class ServicesClient:
    """Sends sandboxes' sockets and rules to the services process (see the module docstring)."""

    def __init__(self, launch: Launcher, upstream: str | None, log_path: Path) -> None:
        self._launch = launch
        self._upstream = upstream or ""
        self._log_path = log_path
        self._control: socket.socket | None = None
        self._pid: int | None = None
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._pid

    async def serve(
        self, sandbox_id: str, sockets: tuple[socket.socket, socket.socket, socket.socket], state: dict
    ) -> None:
        """Start answering on a sandbox's DNS, HTTP and TLS sockets with ``state`` (rules, denied)."""
        entry = _Entry(sockets, {"op": "serve", "id": sandbox_id, **state})
        async with self._lock:
            self._entries[sandbox_id] = entry
            await self._call(entry.message, [s.fileno() for s in sockets])

    async def update(self, sandbox_id: str, state: dict) -> None:
        async with self._lock:
            entry = self._entries[sandbox_id]
            entry.message = {**entry.message, **state}
            await self._call({**entry.message, "op": "update"}, [])

    async def stop(self, sandbox_id: str) -> None:
        """Stop a sandbox's listeners and close its sockets. Never raises."""
        async with self._lock:
            entry = self._entries.pop(sandbox_id, None)
            if entry is None:
                return
            try:
                if self._control is not None:
                    await self._call({"op": "stop", "id": sandbox_id}, [], restart=False)
            except errors.NetworkError as exc:
                log.warning("stopping the network services of sandbox %s: %s", sandbox_id, exc)
            finally:
                for sock in entry.sockets:
                    sock.close()

    async def close(self) -> None:
        """End the process (end of file on its control socket)."""
        control, self._control, self._pid = self._control, None, None
        if control is not None:
            control.close()

    async def _call(self, message: dict[str, object], fds: list[int], restart: bool = True) -> None:
        for attempt in (1, 2):
            control = await self._ensure()
            try:
                loop = asyncio.get_running_loop()
                socket.send_fds(control, [json.dumps(message).encode()], fds)
                reply = await asyncio.wait_for(loop.sock_recv(control, _MAX_MESSAGE_BYTES), _REPLY_TIMEOUT_S)
                if not reply:
                    raise ConnectionResetError("the network services process closed its socket")
            except (OSError, TimeoutError) as exc:
                await self.close()
                if attempt == 2 or not restart:
                    raise errors.NetworkError(f"the network services process failed: {exc}") from exc
                log.warning("the network services process is gone (%s); starting it again", exc)
                continue
            answer = json.loads(reply)
            if "error" in answer:
                raise errors.NetworkError(f"network services: {answer['error']}")
            return

    async def _ensure(self) -> socket.socket:
        if self._control is not None:
            return self._control
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            argv = [sys.executable, "-m", "ember.network.services", self._upstream]
            self._pid = await self._launch(argv, [log_fd, log_fd, theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(log_fd)
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        # A restarted process gets every sandbox's sockets and rules back, before anything new.
        loop = asyncio.get_running_loop()
        for entry in self._entries.values():
            socket.send_fds(ours, [json.dumps(entry.message).encode()], [s.fileno() for s in entry.sockets])
            await asyncio.wait_for(loop.sock_recv(ours, _MAX_MESSAGE_BYTES), _REPLY_TIMEOUT_S)
        return ours
