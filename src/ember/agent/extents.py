"""The guest's end of the transfer disk (``ember.protocol.extents``): extents moved by direct I/O.

An upload's extent is read from the disk into a page-aligned buffer and written to
the file, a download's read from the file and written to the disk, each with
``O_DIRECT`` wherever the file allows it: virtio-blk moves the bytes by DMA, and
no byte passes through the guest's CPU or its page cache (which under TCG is what
costs). The disk is found by its serial; ``EMBER_AGENT_TRANSFER_DISK`` names a file
instead, for the agent run outside a VM in tests (where the host's writes and the
agent's reads share one page cache, so buffered I/O is coherent too).
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ember.agent._errors import AgentError
from ember.protocol.codes import ErrorCode
from ember.protocol.extents import ALIGN_BYTES, SLOT_BYTES, TRANSFER_DISK_SERIAL, Extent

T = TypeVar("T")

_disk_fd: int | None = None


def disk_fd() -> int:
    """The transfer disk, opened once; AgentError if this VM has none."""
    global _disk_fd
    if _disk_fd is None:
        path = os.environ.get("EMBER_AGENT_TRANSFER_DISK") or _find_disk()
        if path is None:
            raise AgentError(ErrorCode.IO_ERROR, "this VM has no transfer disk")
        _disk_fd = open_direct(path, os.O_RDWR)
        if _disk_fd is None:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a device read through its page cache goes stale
                raise AgentError(ErrorCode.IO_ERROR, f"the transfer disk {path} refuses direct I/O")
            _disk_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    return _disk_fd


def available() -> bool:
    """Whether this VM has a transfer disk to move files on."""
    try:
        disk_fd()
    except (AgentError, OSError):
        return False
    return True


def _find_disk() -> str | None:
    for serial in Path("/sys/block").glob("*/serial"):
        try:
            if serial.read_text().strip() == TRANSFER_DISK_SERIAL:
                return f"/dev/{serial.parent.name}"
        except OSError:
            continue
    return None


def open_direct(path: str, flags: int) -> int | None:
    """``path`` opened for direct I/O, or None where its filesystem has none (tmpfs, /proc)."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


class Buffer:
    """One slot's worth of page-aligned memory (what direct I/O needs), reused extent after extent."""

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, SLOT_BYTES)
        self.view = memoryview(self._memory)

    def close(self) -> None:
        self.view.release()
        self._memory.close()


def _aligned(size: int) -> int:
    return -(-size // ALIGN_BYTES) * ALIGN_BYTES


def _is_aligned(*values: int) -> bool:
    return all(value % ALIGN_BYTES == 0 for value in values)


def read_extent(extent: Extent, buffer: Buffer) -> memoryview:
    """An upload's extent, read from the disk into ``buffer``."""
    if not 0 < extent.length <= SLOT_BYTES:
        raise AgentError(ErrorCode.INVALID_REQUEST, f"an extent of {extent.length} bytes")
    size = os.preadv(disk_fd(), [buffer.view[: _aligned(extent.length)]], extent.offset)
    if size < extent.length:
        raise AgentError(ErrorCode.IO_ERROR, f"the transfer disk gave {size} of {extent.length} bytes")
    return buffer.view[: extent.length]


def write_extent(extent: Extent, buffer: Buffer, size: int) -> None:
    """A download's first ``size`` bytes of ``buffer`` onto the disk at ``extent`` (the padding up
    to the alignment is never read)."""
    if not 0 < size <= extent.length <= SLOT_BYTES:
        raise AgentError(ErrorCode.INVALID_REQUEST, f"{size} bytes for an extent of {extent.length}")
    os.pwritev(disk_fd(), [buffer.view[: _aligned(size)]], extent.offset)


class FileWriter:
    """Writes a file's bytes in order: with direct I/O where the file, the position and the
    bytes' memory allow it (a ``Buffer``'s, not a frame's), else through the page cache."""

    def __init__(self, path: str, fd: int, append: bool) -> None:
        self._fd = fd
        self._append = append
        self._position = 0
        self._direct = None if append else open_direct(path, os.O_WRONLY)

    def write(self, data: memoryview, in_buffer: bool = False) -> None:
        fd = self._fd
        if in_buffer and self._direct is not None and _is_aligned(self._position, len(data)):
            fd = self._direct
        view = data
        while view:
            written = os.write(fd, view) if self._append else os.pwrite(fd, view, self._position)
            view, self._position = view[written:], self._position + written

    def close(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None


class FileReader:
    """Reads a regular file's bytes in order from ``position`` into a ``Buffer``: with direct
    I/O while the position stays aligned and the file allows it."""

    def __init__(self, path: str, fd: int, position: int) -> None:
        self._fd = fd
        self.position = position
        self._direct = open_direct(path, os.O_RDONLY) if _is_aligned(position) else None

    def read_into(self, buffer: Buffer, size: int) -> int:
        if self._direct is not None:
            try:
                read = min(size, os.preadv(self._direct, [buffer.view[: _aligned(size)]], self.position))
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.close()
                return self.read_into(buffer, size)
            if not _is_aligned(read):  # the end of the file (or of what was asked)
                self.close()
        else:
            read = os.preadv(self._fd, [buffer.view[:size]], self.position)
        self.position += read
        return read

    def close(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None


async def run_io(function: Callable[..., T], *args: object) -> T:
    """Blocking disk I/O of one extent, run in the event loop itself, then a turn of the loop
    for the other requests. A worker thread's round trip costs more under TCG than the I/O
    (measured in a guest: 1 MiB read from the transfer disk and written to a file with direct
    I/O, 206-337 MB/s inline, 65-105 MB/s through ``asyncio.to_thread``), and inline a
    cancelled request never leaves a thread using the buffer or the extent."""
    result = function(*args)
    await asyncio.sleep(0)
    return result
