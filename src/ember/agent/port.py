"""The guest end of the agent channel: a virtio-serial port found by name.

virtio-serial has two quirks this module hides (see the QEMU facts): without udev
the port is only findable through ``/sys/class/virtio-ports/*/name``, and while
the host is not connected ``read`` returns EOF at once and poll reports HUP, so a
plain read loop would spin. The port therefore uses O_ASYNC: the driver sends
SIGIO when the host connects, and the agent sleeps until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import signal
import time
from pathlib import Path

from ember.agent._fdio import wait_readable, wait_writable

PORT_NAME = "ember.agent"
_READ_BYTES = 1 << 20


def find_port(name: str = PORT_NAME, timeout_s: float = 30.0) -> str:
    """Return the /dev path of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for entry in sorted(Path("/sys/class/virtio-ports").glob("*/name")):
            try:
                if entry.read_text().strip() == name:
                    return f"/dev/{entry.parent.name}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"no virtio-serial port named {name!r} appeared")
        time.sleep(0.05)


class VirtioPort:
    """Non-blocking reads and writes on the port, sleeping on SIGIO while the host is away."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(self._fd, fcntl.F_SETOWN, os.getpid())
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_ASYNC)
        self._host_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGIO, self._host_event.set)

    async def read(self) -> bytes:
        """Next bytes from the host; ``b""`` means the host disconnected."""
        while True:
            try:
                return os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                await wait_readable(self._fd)

    async def wait_for_host(self) -> None:
        """Sleep until the host (re)connects: SIGIO wakes us, a 1 s timeout is the fallback."""
        self._host_event.clear()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if any(event & select.POLLIN for _, event in poller.poll(0)):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._host_event.wait(), 1.0)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        woken = False
        while view:
            try:
                view = view[os.write(self._fd, view) :]
                woken = False
            except BlockingIOError:
                if woken:
                    # Woken as writable yet still blocked: that wake was the HUP the
                    # port reports while the host is away. Sleep until it is back.
                    await self.wait_for_host()
                else:
                    await wait_writable(self._fd)
                woken = True


class SocketPort:
    """The agent channel on a unix socket, for running the agent outside a VM in tests.

    One host at a time, like the virtio port: a disconnect reads as EOF and
    ``wait_for_host`` accepts the next connection.
    """

    def __init__(self, path: str) -> None:
        import socket

        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._listener.setblocking(False)
        self._connection: socket.socket | None = None

    async def read(self) -> bytes:
        if self._connection is None:
            return b""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.sock_recv(self._connection, _READ_BYTES)
        except OSError:
            data = b""
        if not data:
            self._connection.close()
            self._connection = None
        return data

    async def write(self, data: bytes) -> None:
        while self._connection is None:
            await asyncio.sleep(0.05)
        try:
            await asyncio.get_running_loop().sock_sendall(self._connection, data)
        except OSError:
            await asyncio.sleep(0.05)  # the host left; the session resets on the read side

    async def wait_for_host(self) -> None:
        connection, _ = await asyncio.get_running_loop().sock_accept(self._listener)
        connection.setblocking(False)
        self._connection = connection
