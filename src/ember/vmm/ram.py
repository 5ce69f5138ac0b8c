"""The guest RAM a restored VM wrote: read from its QEMU process through /proc.

A restored VM maps its snapshot's memory file privately, so its RAM is that
file plus the pages the guest has written since, which the host kernel keeps as
the process's anonymous copies. ``/proc/PID/pagemap`` tells the two apart
(Documentation/admin-guide/mm/pagemap.rst): a page that is present and not a
file page, or swapped out, was written. Those pages, laid over a copy of the
file, are the whole RAM, so a snapshot of a restored VM costs a pause of one
read of what it wrote (tens of ms), not a migration of all of it.
"""

from __future__ import annotations

import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

PAGE = mmap.PAGESIZE
_ENTRY = 8
# The top byte of each little-endian pagemap entry: 0x80 present, 0x40 swapped, 0x20 file page.
_WRITTEN = bytes(
    ord("w") if (top & 0x80 and not top & 0x20) or top & 0x40 else ord(".") for top in range(256)
)
_RUNS = re.compile(rb"w+")
#: Threads reading a paused VM's written RAM, each a consecutive share of it.
READERS = 2

Pages = list[tuple[int, bytes]]


def written_pages(pid: int, memory_file: Path) -> Pages:
    """``(offset in RAM, contents)`` of each run of pages that ``pid`` wrote in its private
    mapping of ``memory_file``; the process must not run (a paused VM) while this reads.

    The reads, the whole cost of a pause, are split over ``READERS`` threads: a
    read of /proc/PID/mem is one memory copy in the kernel and runs without the GIL.
    """
    inode, path = os.stat(memory_file).st_ino, os.path.realpath(memory_file)
    with open(f"/proc/{pid}/maps") as maps:
        regions = [region for line in maps if (region := _region(line, inode, path)) is not None]
    pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    memory = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        runs = [run for region in regions for run in _written_runs(pagemap, *region)]
        with ThreadPoolExecutor(READERS) as readers:
            shares = readers.map(partial(_read_runs, memory), _split(runs, READERS))
            contents = [data for share in shares for data in share]
    finally:
        os.close(pagemap)
        os.close(memory)
    return [(offset, data) for (offset, _, _), data in zip(runs, contents, strict=True)]


def _written_runs(pagemap: int, start: int, end: int, file_offset: int) -> list[tuple[int, int, int]]:
    """``(offset in RAM, address, length)`` of each written run of pages in one mapping."""
    count = (end - start) // PAGE
    entries = os.pread(pagemap, count * _ENTRY, start // PAGE * _ENTRY)
    flags = entries[_ENTRY - 1 :: _ENTRY].translate(_WRITTEN)
    return [
        (file_offset + run.start() * PAGE, start + run.start() * PAGE, (run.end() - run.start()) * PAGE)
        for run in _RUNS.finditer(flags)
    ]


def _split(runs: list[tuple[int, int, int]], parts: int) -> list[list[tuple[int, int, int]]]:
    """``runs`` in order, cut into ``parts`` consecutive shares of about equal bytes."""
    total = sum(length for _, _, length in runs)
    shares: list[list[tuple[int, int, int]]] = [[] for _ in range(parts)]
    done = 0
    for run in runs:
        shares[min(parts - 1, done * parts // max(total, 1))].append(run)
        done += run[2]
    return shares


def _read_runs(memory: int, runs: list[tuple[int, int, int]]) -> list[bytes]:
    return [_read_exactly(memory, address, length) for _, address, length in runs]


def write_pages(path: Path, pages: Pages) -> None:
    """Lay ``pages`` over the file at ``path`` (a copy of the mapped memory file)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, contents in pages:
            os.pwrite(fd, contents, offset)
    finally:
        os.close(fd)


def _region(line: str, inode: int, path: str) -> tuple[int, int, int] | None:
    """``(start, end, file offset)`` of a /proc/PID/maps line that maps the memory file."""
    fields = line.split(maxsplit=5)
    if len(fields) < 6 or int(fields[4]) != inode or fields[5].rstrip("\n") != path:
        return None
    start, end = (int(address, 16) for address in fields[0].split("-"))
    return start, end, int(fields[2], 16)


def _read_exactly(fd: int, address: int, length: int) -> bytes:
    data = os.pread(fd, length, address)
    if len(data) != length:
        raise OSError(f"read {len(data)} of {length} bytes of guest RAM at {address:#x}")
    return data
