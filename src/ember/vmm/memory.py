"""Snapshot memory as restored VMMs map it: sealed memfds, one per memory file, shared.

A restored VM maps its snapshot's memory file privately (copy-on-write), so all
of them share its pages. QEMU 7.2 opens that file read-write even for a private
mapping, which a jailed VMM cannot (the file is not its own), and must not be
able to: a write through it would change every sandbox restored from the
snapshot. So the VMM is given a memfd holding the file's contents, sealed
against writes, growth and shrinking (``F_SEAL_WRITE`` also refuses the
hole-punching QEMU does on a balloon discard): it opens it "read-write" through
``/proc/self/fd/N`` and may map it privately, but no write of its reaches the
memfd. One memfd per memory file serves every restore of it; it is made from
the file on the first restore, and closed when the engine says the file is
gone (``forget``); a VMM keeps its own reference.

The memfd has no holes: a copy-on-write fault on a hole of a memfd first puts a
zeroed page into the memfd, charged to the VMM that faulted, and a restored
guest filling its memory would be charged twice its RAM (its cgroup ended one
copying a 315 MB file in, measured). Allocated up front by the daemon, each
image costs the host its guest's RAM once, shared by every restore of it; the
first restore of a 512 MiB snapshot waits ~50 ms for the allocation.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from ember.sparse import copy_data

MEMFD_PREFIX = "ember-memory-"
_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class MemoryImages:
    """Sealed memfds of memory files, by path (see the module docstring)."""

    def __init__(self) -> None:
        self._images: dict[Path, asyncio.Future[int]] = {}

    async def open(self, memory_file: Path) -> int:
        """The sealed memfd holding ``memory_file``; owned here, do not close it."""
        image = self._images.get(memory_file)
        if image is None:
            image = self._images[memory_file] = asyncio.ensure_future(asyncio.to_thread(_load, memory_file))
        try:
            return await asyncio.shield(image)
        except BaseException:
            if image.done() and self._images.get(memory_file) is image:
                del self._images[memory_file]  # a failed load is tried again next time
            raise

    def forget(self, keep: set[Path]) -> None:
        """Close the memfds of memory files not in ``keep`` (their snapshots are gone)."""
        for path in [p for p in self._images if p not in keep]:
            image = self._images.pop(path)
            image.add_done_callback(_close)

    def close(self) -> None:
        self.forget(set())


def _load(memory_file: Path) -> int:
    image = os.memfd_create(f"{MEMFD_PREFIX}{memory_file.parent.name}", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        source = os.open(memory_file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            copy_data(source, image)
        finally:
            os.close(source)
        os.posix_fallocate(image, 0, os.fstat(image).st_size)  # the holes, as zeroed pages
        fcntl.fcntl(image, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(image)
        raise
    return image


def _close(image: asyncio.Future[int]) -> None:
    if not image.cancelled() and image.exception() is None:
        os.close(image.result())
