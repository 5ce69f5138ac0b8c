"""The guest end of the agent channel: a byte transport driven by event-loop callbacks.

In a VM the channel is a virtio-serial port found by name. It has two quirks
this module hides (see the QEMU facts): without udev the port is only findable
through ``/sys/class/virtio-ports/*/name``, and while the host is not connected
``read`` returns EOF at once and poll reports HUP, so a reader or writer that
just waits for readiness would spin. So on EOF the port stops watching the fd
and sleeps until SIGIO (O_ASYNC, sent when the host connects) or a one-second
retry. Reads and writes are callbacks, not tasks: every event-loop hop costs
real time under a software CPU, and this path carries every request.

For tests the same transport serves a unix socket (``SocketPort``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

PORT_NAME = "ember.agent"
_READ_BYTES = 1 << 20
_RETRY_S = 1.0


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


class _FdTransport:
    """Reads and writes one connection fd from the event loop; subclasses find the fd."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._pending: deque[memoryview] = deque()
        self._writing = False
        self._on_data: Callable[[bytes], None] = lambda data: None
        self._on_disconnect: Callable[[], None] = lambda: None

    def start(self, on_data: Callable[[bytes], None], on_disconnect: Callable[[], None]) -> None:
        self._on_data, self._on_disconnect = on_data, on_disconnect
        self._begin()

    # -- reading

    def _attach(self, fd: int) -> None:
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        if self._pending:
            self._want_write()

    def _readable(self) -> None:
        # A virtio port hands over one 4 KiB receive buffer per read(): drain what
        # is there before decoding, so that the decoder runs once per batch rather
        # than once per page (under TCG that is most of the cost of an upload).
        assert self._fd is not None
        chunks: list[bytes] = []
        size, ended = 0, False
        while size < _READ_BYTES:
            try:
                data = os.read(self._fd, _READ_BYTES - size)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._on_data(b"".join(chunks))
        if ended and self._fd is not None:
            self._detach()
            self._on_disconnect()
            self._await_host()

    def _detach(self) -> None:
        if self._fd is None:
            return
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._close_connection(self._fd)
        self._fd = None

    # -- writing

    def write(self, data: bytes) -> None:
        """Send now if possible, else queue; never blocks the caller."""
        if not data:
            return
        if self._fd is not None and not self._pending:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                return  # the host is gone; the read side notices and resets
            if written == len(data):
                return
            data = data[written:]
        self._pending.append(memoryview(data))
        if self._fd is not None:
            self._want_write()

    def discard_pending(self) -> None:
        """Forget queued output: it belonged to a session that just ended."""
        self._pending.clear()

    def _want_write(self) -> None:
        if not self._writing and self._fd is not None:
            self._writing = True
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        assert self._fd is not None
        progressed = False
        while self._pending:
            chunk = self._pending[0]
            try:
                written = os.write(self._fd, chunk)
            except BlockingIOError:
                break
            except OSError:
                self._pending.clear()
                break
            progressed = True
            if written == len(chunk):
                self._pending.popleft()
            else:
                self._pending[0] = chunk[written:]
        if not self._pending or not progressed:
            # Done, or woken as writable yet blocked: the HUP a virtio port reports
            # while the host is away. Stop watching; the next write or reconnect retries.
            self._loop.remove_writer(self._fd)
            self._writing = False
            if self._pending:
                self._loop.call_later(0.05, self._want_write)

    # -- per transport

    def _begin(self) -> None:
        raise NotImplementedError

    def _await_host(self) -> None:
        raise NotImplementedError

    def _close_connection(self, fd: int) -> None:
        raise NotImplementedError


class VirtioPort(_FdTransport):
    """The virtio-serial port: one fd for the VM's life; the host comes and goes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._port_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(self._port_fd, fcntl.F_SETOWN, os.getpid())
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_signal_handler(signal.SIGIO, self._host_may_be_back)

    def _set_async(self, enabled: bool) -> None:
        # SIGIO only while waiting for the host: during a session it would fire
        # on every incoming byte and cost a wake-up each time.
        flags = fcntl.fcntl(self._port_fd, fcntl.F_GETFL)
        flags = flags | os.O_ASYNC if enabled else flags & ~os.O_ASYNC
        fcntl.fcntl(self._port_fd, fcntl.F_SETFL, flags)

    def _begin(self) -> None:
        # The host usually connected before the guest booted: just start reading.
        self._attach(self._port_fd)

    def _await_host(self) -> None:
        self._set_async(True)
        self._retry = self._loop.call_later(_RETRY_S, self._host_may_be_back)

    def _host_may_be_back(self) -> None:
        if self._fd is not None:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._set_async(False)
        # If the host is still away the first read returns EOF and we wait again.
        self._attach(self._port_fd)

    def _close_connection(self, fd: int) -> None:
        pass  # the port stays open for the next host


class SocketPort(_FdTransport):
    """The agent channel on a unix socket, for running the agent outside a VM in tests."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._listener.setblocking(False)
        self._connection: socket.socket | None = None

    def _begin(self) -> None:
        self._await_host()

    def _await_host(self) -> None:
        self._loop.add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._loop.remove_reader(self._listener.fileno())
        connection.setblocking(False)
        self._connection = connection
        self._attach(connection.fileno())

    def _close_connection(self, fd: int) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
            self._connection = None
