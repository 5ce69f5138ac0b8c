"""The daemon's own memory, written down on request: what a soak reads to tell a leak from a warm-up.

Off unless ``EMBER_MEMORY_REPORT`` names a directory (the soak's lab sets it): then
SIGUSR2 makes the daemon write ``memory.json`` there, between two turns of its
event loop. It holds the daemon's resident memory (/proc/self/smaps_rollup); what
glibc's malloc holds in use and holds free (free memory malloc keeps is resident
memory that no object explains: fragmentation, or an arena's high-water mark);
what SQLite holds (its page cache grows with the state database, to its bound);
Python's allocated blocks; its objects counted by type after a collection (those frozen at
the daemon's start, ``gc.freeze``, only counted); its
threads, loggers and asyncio tasks. With ``EMBER_MEMORY_TRACE=N`` it also traces
allocations (tracemalloc, N frames a trace: slow, and the daemon's memory doubles)
and dumps a snapshot into ``memory.trace``, which ``tracemalloc.Snapshot.load``
reads back to diff two of them. Off, it costs nothing: no handler, no tracing.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import signal
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

DIRECTORY_ENV = "EMBER_MEMORY_REPORT"
TRACE_ENV = "EMBER_MEMORY_TRACE"
REPORT = "memory.json"
TRACE = "memory.trace"

log = logging.getLogger("ember.server")


def install() -> None:
    """Write a report into ``$EMBER_MEMORY_REPORT`` at every SIGUSR2, if that is set."""
    directory = os.environ.get(DIRECTORY_ENV)
    if not directory:
        return
    frames = int(os.environ.get(TRACE_ENV) or 0)
    if frames:
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR2, lambda signum, frame: _write_or_log(Path(directory)))
    log.info("memory reports on SIGUSR2 into %s%s", directory, " (tracing)" if frames else "")


def _write_or_log(directory: Path) -> None:
    # A signal handler's exception would surface in whatever the event loop was running.
    try:
        write(directory)
    except Exception:
        log.exception("writing the memory report into %s failed", directory)


def write(directory: Path) -> None:
    """``report()`` into ``directory/memory.json`` (and the trace, when tracing), each
    file appearing whole: the reader waits for the report to exist."""
    facts = report()
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"{TRACE}.part"))
        os.replace(directory / f"{TRACE}.part", directory / TRACE)
    (directory / f"{REPORT}.part").write_text(json.dumps(facts))
    os.replace(directory / f"{REPORT}.part", directory / REPORT)


def report() -> dict[str, Any]:
    """The process's memory as the kernel, malloc and Python each see it (see the module docstring)."""
    # Read first: what follows allocates.
    smaps = _smaps_rollup()
    malloc = _mallinfo()
    gc.collect()
    types: dict[str, int] = {}
    for thing in gc.get_objects():
        kind = type(thing)
        name = f"{kind.__module__}.{kind.__qualname__}"
        types[name] = types.get(name, 0) + 1
    try:
        tasks: int | None = len(asyncio.all_tasks())
    except RuntimeError:  # no event loop runs in this thread
        tasks = None
    return {
        "rss_kib": smaps.get("Rss", 0),
        "anonymous_kib": smaps.get("Anonymous", 0),
        **malloc,
        "sqlite_bytes": _sqlite_bytes(),
        "python_blocks": sys.getallocatedblocks(),
        "objects": sum(types.values()),
        #: Objects the daemon froze at its start (``gc.freeze``): neither collected nor in ``types``.
        "frozen_objects": gc.get_freeze_count(),
        "types": types,
        "threads": sorted(thread.name for thread in threading.enumerate()),
        "loggers": len(logging.Logger.manager.loggerDict),
        "tasks": tasks,
        "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
    }


def _smaps_rollup() -> dict[str, int]:
    """/proc/self/smaps_rollup's sizes, in KiB, by name."""
    sizes = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                sizes[name] = int(value.split()[0])
    return sizes


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


def _mallinfo() -> dict[str, int | None]:
    """What glibc's malloc has in use and keeps free, in bytes (None elsewhere, as on musl)."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:  # not glibc, or glibc before 2.33
        return {"malloc_in_use_bytes": None, "malloc_free_bytes": None, "malloc_mapped_bytes": None}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "malloc_in_use_bytes": info.uordblks + info.hblkhd,
        "malloc_free_bytes": info.fordblks,
        "malloc_mapped_bytes": info.hblkhd,
    }


def _sqlite_bytes() -> int | None:
    """The memory SQLite has allocated (sqlite3_status64 of SQLITE_STATUS_MEMORY_USED), when
    the library Python's sqlite3 uses is the system's shared one."""
    try:
        library = ctypes.CDLL("libsqlite3.so.0")  # the copy already loaded, if there is one
    except OSError:
        return None
    current, highest = ctypes.c_int64(), ctypes.c_int64()
    if library.sqlite3_status64(0, ctypes.byref(current), ctypes.byref(highest), 0) != 0:
        return None
    return current.value
