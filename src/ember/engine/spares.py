"""Spare memory images, made ahead of a sandbox's next snapshot.

A snapshot's memory image (``ember.vmm.memory``) of a restored sandbox starts as
a copy of the image the sandbox maps: about 30 ms for a template's 84 MB of
data, all of it on the clock of a fork. That image never changes, so after one
snapshot of a sandbox the next copy is
made in the background, in a thread at the lowest CPU priority, once the
children a fork is starting are up (``ember.vmm.memory.Background``), and the
next snapshot takes it at once. At
most one spare per image: the cost is one more copy of the data of each image
whose sandboxes are being snapshotted. Spares are a cache: a failed one is made afresh, and they go
when their source does and when the daemon stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ember.vmm.memory import Background, VmStarts, close_when_done

log = logging.getLogger("ember.engine")

Make = Callable[[], int]


class MemorySpares:
    """One ready image (an open memfd) per source key, made in the background."""

    def __init__(self, starts: VmStarts) -> None:
        self._spares: dict[str, asyncio.Future[int]] = {}
        self._starts = starts
        self._background: Background | None = None
        #: Snapshots that took a spare instead of making their image on the spot.
        self.taken = 0

    async def take(self, key: str, make: Make) -> int:
        """The spare of ``key`` when one is ready, else one made now; the caller owns it.

        A spare still being made is not waited for: at the lowest priority, beside the
        children of the last fork, it can take a second; made now, it takes ~30 ms.
        """
        spare = self._spares.pop(key, None)
        if spare is not None and spare.done() and spare.exception() is None:
            self.taken += 1
            return spare.result()
        if spare is not None:
            close_when_done(spare)
        return await asyncio.to_thread(make)

    def prepare(self, key: str, make: Make) -> None:
        """Start making the next image of ``key``, unless one is on its way."""
        if key in self._spares:
            return
        if self._background is None:
            self._background = Background("ember-spare", self._starts)
        making = asyncio.wrap_future(self._background.submit(make))
        making.add_done_callback(_log_failure)
        self._spares[key] = making

    def held(self) -> set[str]:
        """The sources that have a spare, made or on its way."""
        return set(self._spares)

    def ready(self, key: str) -> bool:
        spare = self._spares.get(key)
        return spare is not None and spare.done()

    def forget(self, keep: set[str]) -> None:
        """Drop the spares of sources not in ``keep`` (their snapshots or sandboxes are gone)."""
        for key in [k for k in self._spares if k not in keep]:
            close_when_done(self._spares.pop(key))

    def close(self) -> None:
        """Wait out an image in the making and close every spare."""
        if self._background is not None:
            self._background.shutdown()
            self._background = None
        self.forget(set())


def _log_failure(making: asyncio.Future[int]) -> None:
    if not making.cancelled() and (exc := making.exception()) is not None:
        log.warning("making a spare memory image failed: %s", exc)
