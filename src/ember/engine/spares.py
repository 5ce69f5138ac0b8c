"""Spare copies of restored sandboxes' memory files, made ahead of their next snapshot.

A snapshot of a restored sandbox starts as a copy of the memory file the sandbox
maps (``ember.engine.snapshots``): about 30 ms for a template's 84 MB of data,
all of it on the clock of a fork. That file never changes, so after one snapshot
of a sandbox on a file the next copy is made in the background, in a thread at
the lowest CPU priority (it yields to the children a fork is starting), and the
next snapshot on that file takes it with a rename. At most one spare per file:
the cost is one more copy of each memory file that is being snapshotted, on
disk and in the page cache. Spares are a cache: a failed one is copied afresh,
and the directory is emptied when the daemon starts and when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ember.sparse import copy_sparse

log = logging.getLogger("ember.engine")


class MemorySpares:
    """One ready copy per memory file, kept in ``directory`` (on the snapshots' filesystem)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)  # a previous daemon's
        self._copies: dict[Path, tuple[Path, asyncio.Future[None]]] = {}
        self._executor: ThreadPoolExecutor | None = None

    async def copy(self, source: Path, target: Path) -> None:
        """Make ``target`` a copy of ``source``: the spare when one is ready, else a copy now."""
        if (spare := self._copies.pop(source, None)) is not None:
            path, copying = spare
            try:
                await copying
                os.rename(path, target)
                return
            except OSError as exc:  # the spare failed (a full disk, say): copy as if there were none
                log.warning("spare copy of %s unusable (%s); copying it now", source, exc)
        await asyncio.to_thread(copy_sparse, source, target)

    def prepare(self, source: Path) -> None:
        """Start a spare copy of ``source`` for its next snapshot, unless one is on its way."""
        if source in self._copies:
            return
        if self._executor is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._executor = ThreadPoolExecutor(1, "ember-spare", initializer=_lowest_priority)
        path = self.directory / secrets.token_hex(8)
        copying = asyncio.get_running_loop().run_in_executor(self._executor, copy_sparse, source, path)
        copying.add_done_callback(_log_failure)
        self._copies[source] = (path, copying)

    def forget(self, keep: set[Path]) -> None:
        """Drop the spares of memory files not in ``keep`` (their snapshots are gone)."""
        for source in [s for s in self._copies if s not in keep]:
            path, copying = self._copies.pop(source)
            copying.add_done_callback(lambda _, path=path: path.unlink(missing_ok=True))

    def close(self) -> None:
        """Wait out a copy in progress and delete every spare."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._copies.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def _lowest_priority() -> None:
    # Given a thread id, Linux sets that thread's priority only.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _log_failure(copying: asyncio.Future[None]) -> None:
    if not copying.cancelled() and (exc := copying.exception()) is not None:
        log.warning("spare memory copy failed: %s", exc)
