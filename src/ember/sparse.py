"""Copying sparse files (guest RAM, disks) without filling their holes.

Nothing here imports the rest of Ember: images, the VMM driver and the engine all copy
memory files and disks this way.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

_COPY_CHUNK = 1 << 20
_ZEROS = bytes(_COPY_CHUNK)


def copy_sparse(source: Path, target: Path) -> None:
    """Copy `source` to the new file `target`, copying only its data and leaving holes as holes."""
    with source.open("rb") as src, target.open("xb") as dst:
        try:
            copy_data(src.fileno(), dst.fileno())
        except BaseException:
            target.unlink()
            raise


def copy_data(src: int, dst: int, skip_zeros: bool = False) -> None:
    """Copy the data of file ``src`` into ``dst`` (made the same size); holes stay holes.

    ``skip_zeros`` also leaves out data that is all zeros (read and compared, a MiB
    at a time): a memfd's pages that were only ever read count as data.
    """
    os.ftruncate(dst, os.fstat(src).st_size)
    # The buffer is a mapping of its own, not malloc's: copies run in worker threads, and
    # a thread's malloc arena keeps what it once held.
    buffer = memoryview(mmap.mmap(-1, _COPY_CHUNK)) if skip_zeros else None
    for data_start, data_end in data_ranges(src):
        if buffer is None:
            _copy_range(src, dst, data_start, data_end)
        else:
            _copy_nonzero(buffer, src, dst, data_start, data_end)


def data_ranges(fd: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of file ``fd`` that hold data, in order (holes left out)."""
    size = os.fstat(fd).st_size
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        data_end = os.lseek(fd, data_start, os.SEEK_HOLE)
        yield data_start, data_end
        offset = data_end


def _copy_nonzero(buffer: memoryview, src: int, dst: int, start: int, end: int) -> None:
    for offset in range(start, end, _COPY_CHUNK):
        view = buffer[: os.preadv(src, [buffer[: min(_COPY_CHUNK, end - offset)]], offset)]
        if not _ZEROS.startswith(view):  # a memcmp, no copy (memoryview's == goes byte by byte)
            os.pwrite(dst, view, offset)


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        try:
            copied = os.copy_file_range(src, dst, end - offset, offset, offset)
        except OSError as exc:
            # Across filesystems (EXDEV) or where unsupported: copy through memory.
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            copied = os.pwrite(dst, os.pread(src, min(_COPY_CHUNK, end - offset), offset), offset)
        if copied == 0:
            raise OSError(errno.EIO, f"short copy at offset {offset}")
        offset += copied
