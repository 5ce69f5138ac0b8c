"""Snapshot memory as restored VMMs map it: sealed memfds ("images"), one per snapshot, shared.

A restored VM maps its snapshot's memory privately (copy-on-write), so all of
them share its pages. QEMU 7.2 opens a memory file read-write even for a
private mapping, which a jailed VMM cannot (the file is not its own), and must
not be able to: a write through it would change every sandbox restored from the
snapshot. So the VMM is given a memfd holding the snapshot's memory, sealed
against writes, growth and shrinking (``F_SEAL_WRITE`` also refuses the
hole-punching QEMU does on a balloon discard): it opens it "read-write" through
``/proc/self/fd/N`` and may map it privately, but no write of its reaches the
image. A snapshot builds its image directly (``ember.engine.snapshots``) and a
durable one also keeps it on disk (``save``); an image that no sandbox maps is
closed, and made again from the disk file for the next restore (``open``).

An image gets no holes: a copy-on-write fault on a hole of a memfd first puts
a zeroed page into the memfd, charged to the VMM that faulted, and a restored
guest filling its memory would be charged twice its RAM (its cgroup ended one
copying a 315 MB file in, measured). So every new image is filled, every page
allocated by the daemon, in the background (``fill``: ~70 ms of a low-priority
thread for 512 MiB, two seconds after the image is made, once no VM is starting:
``Background``): the first restores of it start at once and may be charged a few
such pages meanwhile. An image costs
the host its guest's RAM once, shared by every restore of it; the pages only
allocated stay holes to ``SEEK_DATA``, so copies and saves of an image move only
what its guest wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ember.sparse import copy_data

log = logging.getLogger("ember.vmm")

MEMFD_PREFIX = "ember-memory-"
#: A new image is filled this long after it is made, if something still maps it then: the
#: restores a fork or a pool refill starts right away would otherwise compete with the filling
#: (zeroing 512 MiB slowed QEMU's start-up 40 -> 120 ms, measured), and a fork's image often
#: goes with its children within that time.
FILL_DELAY_S = 2.0
_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
#: Background work waits at most this long for the VMs starting to be up.
BACKGROUND_WAIT_S = 30.0


class VmStarts:
    """How many VMs are starting (booting or restoring, until their agent answered): the
    daemon's background work waits for none to be (``Background``)."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def wait_none(self, timeout_s: float) -> bool:
        """Block until no VM is starting, or ``timeout_s``; whether none is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout_s)


class Background:
    """One thread at the lowest CPU priority, for work that must yield to VMs starting
    (filling images, spare copies): each job first waits until none is (at most
    ``BACKGROUND_WAIT_S``). The priority alone does not make it yield: each VMM runs in a
    cgroup of its own, and the scheduler weighs the daemon's group (a session's autogroup,
    say) against each VMM's whatever its threads' nice values; measured, a fork(8)'s image
    was filled while its children started, 140 ms of CPU of theirs."""

    def __init__(self, name: str, starts: VmStarts) -> None:
        self._executor = ThreadPoolExecutor(1, name, initializer=_lowest_priority)
        self._starts = starts

    def submit(self, job: Callable[..., Any], *args: object) -> Future[Any]:
        return self._executor.submit(self._run, job, args)

    def _run(self, job: Callable[..., Any], args: tuple[object, ...]) -> Any:
        self._starts.wait_none(BACKGROUND_WAIT_S)
        return job(*args)

    def shutdown(self) -> None:
        """Drop the jobs not started; wait for the one running."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class MemoryImages:
    """The images of this daemon's snapshots, by the path of their memory file."""

    def __init__(self, starts: VmStarts, spare_bytes: int | None = None) -> None:
        self._images: dict[Path, asyncio.Future[int]] = {}
        self._used: dict[Path, float] = {}
        self._starts = starts
        self._filler: Background | None = None
        #: Images that no sandbox maps are kept, most recently used first, up to this much.
        self.spare_bytes = spare_bytes if spare_bytes is not None else _default_spare_bytes()

    async def open(self, memory_file: Path) -> int:
        """The image of ``memory_file`` (made from the file if there is none); owned here."""
        self._used[memory_file] = time.monotonic()
        image = self._images.get(memory_file)
        if image is None:
            image = self._images[memory_file] = asyncio.ensure_future(asyncio.to_thread(_load, memory_file))
            image.add_done_callback(self._fill)
        try:
            return await asyncio.shield(image)
        except BaseException:
            if image.done() and self._images.get(memory_file) is image:
                del self._images[memory_file]  # a failed load is tried again next time
            raise

    def put(self, memory_file: Path, image: int) -> None:
        """Take ``image`` (an unsealed memfd, now sealed here) as ``memory_file``'s."""
        seal(image)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(image)
        self.forget_one(memory_file)
        self._images[memory_file] = future
        self._used[memory_file] = time.monotonic()
        self._fill(future)

    def forget_one(self, memory_file: Path) -> None:
        self._used.pop(memory_file, None)
        if (image := self._images.pop(memory_file, None)) is not None:
            close_when_done(image)

    def forget(self, keep: set[Path]) -> None:
        """Close the images not in ``keep`` (their snapshots are gone; VMMs keep their own)."""
        for path in [p for p in self._images if p not in keep]:
            self.forget_one(path)

    def retain(self, pinned: set[Path], existing: set[Path]) -> None:
        """Keep the images of ``pinned`` memory files (mapped, or restored often) and, most
        recently used first, those of other ``existing`` ones up to ``spare_bytes``: a
        restore that finds its image skips making one (~60 ms for 512 MiB)."""
        self.forget(existing | pinned)
        spare = 0
        for path in sorted(self._images, key=lambda p: self._used.get(p, 0.0), reverse=True):
            if path in pinned:
                continue
            image = self._images[path]
            spare += os.fstat(image.result()).st_size if image.done() and not image.exception() else 0
            if spare > self.spare_bytes:
                self.forget_one(path)

    def close(self) -> None:
        if self._filler is not None:
            self._filler.shutdown()
            self._filler = None
        self.forget(set())

    def _fill(self, image: asyncio.Future[int]) -> None:
        """Fill ``image`` soon, if it is still wanted then (a fork's, say, may be gone)."""
        if not image.cancelled() and image.exception() is None:
            asyncio.get_running_loop().call_later(FILL_DELAY_S, self._start_fill, image)

    def _start_fill(self, image: asyncio.Future[int]) -> None:
        if image not in self._images.values():
            return  # forgotten: nothing maps it any more
        if self._filler is None:
            self._filler = Background("ember-fill", self._starts)
        # A duplicate: the image may be forgotten (and closed) while it is filled.
        self._filler.submit(_fill, os.dup(image.result()))


def _default_spare_bytes() -> int:
    """An eighth of the host's memory, at most 4 GiB."""
    return min(4 << 30, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8)


def new_image(size_bytes: int, name: str) -> int:
    """A new, empty (all holes), unsealed image of ``size_bytes``."""
    image = os.memfd_create(f"{MEMFD_PREFIX}{name}", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(image, size_bytes)
    except BaseException:
        os.close(image)
        raise
    return image


def copy_of(source: Path, name: str) -> int:
    """A new, unsealed image holding the contents of the file (or memfd link) ``source``.

    From a memfd, pages of zeros are left out: an image's pages that a restored guest
    only read (or faulted in to copy) count as data to ``SEEK_DATA``, and copied they
    would grow every image made from it (a template's 84 MB of data read as 470 MB
    after one restore of it had filled its memory: 255 ms instead of 57, measured).
    """
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        image = new_image(os.fstat(fd).st_size, name)
        try:
            copy_data(fd, image, skip_zeros=_is_memfd(fd))
        except BaseException:
            os.close(image)
            raise
    finally:
        os.close(fd)
    return image


def seal(image: int) -> None:
    """From now on nobody writes, grows or shrinks ``image``."""
    fcntl.fcntl(image, fcntl.F_ADD_SEALS, _SEALS)


def save(image: int, path: Path) -> None:
    """Write ``image`` into the new file ``path``: what its guest wrote, its zeros left holes."""
    with path.open("xb") as target:
        copy_data(image, target.fileno(), skip_zeros=True)


def _is_memfd(fd: int) -> bool:
    return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")


def _lowest_priority() -> None:
    # Given a thread id, Linux sets that thread's priority only.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _fill(image: int) -> None:
    """Allocate every page of a (sealed) image: allowed within its size, and charged to us."""
    try:
        os.posix_fallocate(image, 0, os.fstat(image).st_size)
    except OSError as exc:  # restores of it will be charged the pages they first write
        log.warning("could not fill a memory image: %s", exc)
    finally:
        os.close(image)


def _load(memory_file: Path) -> int:
    image = copy_of(memory_file, memory_file.parent.name)
    seal(image)
    return image


def close_when_done(image: asyncio.Future[int]) -> None:
    """Close the memfd that ``image`` holds (or will: once it is made)."""
    if image.done():
        _close(image)
    else:
        image.add_done_callback(_close)


def _close(image: asyncio.Future[int]) -> None:
    if image.cancelled() or image.exception() is not None:
        return
    try:
        # The last close of an image frees its pages: ~0.1 s for a filled 512 MiB, which
        # on the event loop held up every sandbox's calls (measured with py-spy). The
        # loop's executor is waited for when the loop ends.
        asyncio.get_running_loop().run_in_executor(None, os.close, image.result())
    except RuntimeError:  # no loop (or it is ending): here and now
        os.close(image.result())
