"""The host's end of a VM's transfer disk (``ember.protocol.extents``): lanes of slots lent to calls.

The disk is a sparse file in the VM's run directory, the daemon reads and writes it
at offsets it chose, and a call that moves a file holds one lane of it. Every
extent is either the host's or lent to the guest, and the guest only ever gives
back what it was lent: an extent it names that it does not hold breaks the
protocol. What the guest writes to the disk outside its lent extents is its own
business (the disk is its device): the host never reads there. A lane's pages
are freed when its call ends, so an idle sandbox's disk holds nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import deque
from pathlib import Path

from ember.protocol.extents import LANE_SLOTS, LANES, SLOT_BYTES
from ember.protocol.framing import ProtocolError
from ember.protocol.pulse import Pulse

log = logging.getLogger("ember.engine.channel")

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_LANE_BYTES = SLOT_BYTES * LANE_SLOTS


class TransferDisk:
    """One VM's transfer disk as one agent connection uses it; lanes are handed out whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._free = deque(range(LANES))

    def lane(self) -> Lane | None:
        """A lane for one call, or None when every lane is taken (the call uses DATA frames)."""
        if self._fd is None or not self._free:
            return None
        return Lane(self, self._free.popleft())

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _punch(fd, 0, _LANE_BYTES * LANES)
            os.close(fd)

    def _fileno(self) -> int:
        if self._fd is None:
            raise OSError(f"the transfer disk {self.path} is closed")
        return self._fd

    def _give_back(self, index: int) -> None:
        if self._fd is not None:
            _punch(self._fd, index * _LANE_BYTES, _LANE_BYTES)
            self._free.append(index)


class Lane:
    """One call's slots. The host fills or reads the slots it holds and lends them out by
    EXTENT frames; ``take_back`` checks each one the guest returns."""

    def __init__(self, disk: TransferDisk, index: int) -> None:
        self._disk = disk
        self._index = index
        first = index * _LANE_BYTES
        self._held = deque(range(first, first + _LANE_BYTES, SLOT_BYTES))
        self._lent: dict[int, int] = {}
        self._pulse = Pulse()
        self.released = False

    async def hold(self) -> int | None:
        """A slot the host holds (the offset of its first byte), waiting while all are lent;
        None once the lane is released."""
        while not self._held:
            if self.released:
                return None
            await self._pulse.wait()
        return None if self.released else self._held.popleft()

    def holds_any(self) -> int | None:
        """A slot the host holds without waiting, or None."""
        return self._held.popleft() if self._held and not self.released else None

    def lend(self, offset: int, length: int) -> None:
        """The slot at ``offset`` goes to the guest (its EXTENT frame is the caller's to send)."""
        self._lent[offset] = length

    def take_back(self, offset: int, length: int) -> None:
        """The guest gives back a slot it was lent, with at most as many bytes as it was lent."""
        lent = self._lent.pop(offset, None)
        if lent is None:
            raise ProtocolError(f"it gave back an extent at {offset} that it did not hold")
        if length > lent:
            raise ProtocolError(f"it gave back {length} bytes at {offset}, of a {lent}-byte extent")

    def restore(self, offset: int) -> None:
        """A slot taken back (and read, if it held data) is the host's again."""
        self._held.append(offset)
        self._pulse.fire()

    def write(self, offset: int, at: int, data: memoryview | bytes) -> None:
        """``data`` into the slot at ``offset``, ``at`` bytes in."""
        view, position = memoryview(data), offset + at
        while view:
            written = os.pwrite(self._disk._fileno(), view, position)
            view, position = view[written:], position + written

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._disk._fileno(), length, offset)
        if len(data) != length:
            raise OSError(f"the transfer disk gave {len(data)} of {length} bytes at {offset}")
        return data

    def release(self) -> None:
        """The call is over: the lane's pages are freed and another call may take it."""
        if self.released:
            return
        self.released = True
        self._pulse.fire()
        self._disk._give_back(self._index)


def _punch(fd: int, offset: int, length: int) -> None:
    """Free the pages of a byte range without changing the file's size."""
    result = _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    if result != 0:
        log.debug("punching a hole in a transfer disk failed: %s", os.strerror(ctypes.get_errno()))


def _libc_fallocate() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    # The standard library wraps posix_fallocate only; freeing a range needs the flags.
    function = ctypes.CDLL(None, use_errno=True).fallocate
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


_fallocate = _libc_fallocate()
