"""Where a VMM's memory goes: its PSS, page by page, split by what the pages hold.

PSS (proportional set size) charges each resident page to the processes mapping
it in equal shares, so pages that restored sandboxes share (their snapshot's
memory image, QEMU's code) cost each of them less the more there are. The split
reads ``/proc/PID/maps`` for what each mapping is, ``/proc/PID/pagemap`` for its
resident pages (their frame numbers, and whether each is the process's own
anonymous copy or a page of the mapped file) and ``/proc/kpagecount`` for how
many mappings share each frame (Documentation/admin-guide/mm/pagemap.rst); frame
numbers and counts are for root only. A page of zeros that KSM maps has no count
and costs nothing, as in ``smaps``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ember.vmm.memory import MEMFD_PREFIX

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20

TCG = "TCG code"  # QEMU's translation of the guest code run so far
HEAP = "QEMU heap"  # glibc's main arena
ANONYMOUS = "QEMU other anonymous"  # malloc arenas of other threads, large allocations, stacks
RELOCATED = "QEMU+libs relocated"  # private copies of library pages the dynamic loader wrote
FILES = "QEMU+libs files (shared)"  # code and read-only data, shared with every QEMU
WRITTEN = "guest RAM written"  # private copies of the pages the guest wrote since its restore
IMAGE = "guest RAM image (shared)"  # the snapshot's pages the guest read, shared by its restores
PAGE_TABLES = "page tables"  # kernel memory, besides PSS
CATEGORIES = (TCG, HEAP, ANONYMOUS, RELOCATED, FILES, WRITTEN, IMAGE, PAGE_TABLES)

_PRESENT, _FILE_OR_SHARED = 1 << 63, 1 << 61
_PFN = (1 << 55) - 1


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    perms: str
    path: str

    @property
    def guest_ram(self) -> bool:
        # A restored VM maps its snapshot's image (a memfd); a booted one, its memory file.
        return MEMFD_PREFIX in self.path or self.path.endswith("/memory")

    def category(self, anonymous_page: bool) -> str:
        if self.guest_ram:
            return WRITTEN if anonymous_page else IMAGE
        if self.path.startswith("/"):
            return RELOCATED if anonymous_page else FILES
        if self.path == "[heap]":
            return HEAP
        if not self.path and "x" in self.perms:
            return TCG  # the only executable anonymous memory of QEMU: its code buffer
        return ANONYMOUS


def breakdown(pids: Iterable[int]) -> dict[str, float] | None:
    """MiB per category (``CATEGORIES``), averaged over the processes ``pids``;
    None where the frame numbers cannot be read (not root, or no such process)."""
    pids = list(pids)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    try:
        counts = os.open("/proc/kpagecount", os.O_RDONLY)
    except OSError:
        return None
    try:
        shares: dict[int, float] = {}  # frame -> the share of one mapping, read once
        for pid in pids:
            if not _add_process(pid, counts, shares, totals):
                return None
    finally:
        os.close(counts)
    return {name: total / len(pids) / MIB for name, total in totals.items()} if pids else None


def _add_process(pid: int, counts: int, shares: dict[int, float], totals: dict[str, float]) -> bool:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        return False
    try:
        resident = frames = 0
        for line in maps:
            mapping = _mapping(line)
            if mapping is None:
                continue
            pages = (mapping.end - mapping.start) // PAGE
            entries = os.pread(pagemap, pages * 8, mapping.start // PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", entries):
                if not entry & _PRESENT:
                    continue
                resident += 1
                frame = entry & _PFN
                frames += frame != 0
                share = shares.get(frame)
                if share is None:
                    mapped = struct.unpack("<Q", os.pread(counts, 8, frame * 8))[0] if frame else 0
                    share = shares[frame] = PAGE / mapped if mapped else 0.0
                totals[mapping.category(not entry & _FILE_OR_SHARED)] += share
    except OSError:
        return False
    finally:
        os.close(pagemap)
    if resident and not frames:
        return False  # frame numbers hidden: not root
    kib = next((int(line.split()[1]) for line in status if line.startswith("VmPTE:")), 0)
    totals[PAGE_TABLES] += kib * 1024
    return True


def _mapping(line: str) -> _Mapping | None:
    fields = line.split(maxsplit=5)
    if len(fields) < 5 or fields[1].startswith("---") or fields[-1] == "[vsyscall]":
        return None  # reserved address space (guard pages, arenas' unused part): nothing resident
    start, end = (int(address, 16) for address in fields[0].split("-"))
    return _Mapping(start, end, fields[1], fields[5].strip() if len(fields) == 6 else "")
