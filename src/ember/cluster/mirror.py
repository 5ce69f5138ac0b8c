"""A local copy of everything Ember keeps in etcd, kept current by one watch.

Routing a call, checking an API key and placing a sandbox read this copy, never
etcd itself: they cost no round trip, and they go on answering from the last
state seen while etcd has no quorum (sandboxes keep serving; only writes stop).
A key missing here may be newer than the copy: readers that must know ask
etcd once (``Catalog.lookup``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ember.cluster.etcd import Etcd, EtcdError, KeyValue
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.cluster")

RETRY_S = 0.5


class Mirror:
    """Every key under ``prefix``, by key; ``listeners`` hear of each change once applied."""

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self.items: dict[str, KeyValue] = {}
        self.revision = 0
        #: When the copy was last known complete and current (a read or a watch message).
        self.synced_at = 0.0
        self.listeners: list[Callable[[str, KeyValue | None], None]] = []
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-mirror")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def loaded(self, timeout_s: float) -> None:
        """Wait for the first complete copy."""
        await asyncio.wait_for(self._loaded.wait(), timeout_s)

    def under(self, prefix: str) -> list[KeyValue]:
        return [kv for key, kv in self.items.items() if key.startswith(prefix)]

    def apply(self, kv: KeyValue, deleted: bool = False) -> None:
        """Take a change this process made itself at once, before its watch event comes."""
        current = self.items.get(kv.key)
        if current is not None and current.mod_revision > kv.mod_revision:
            return
        self._set(kv.key, None if deleted else kv)

    def _set(self, key: str, kv: KeyValue | None) -> None:
        if kv is None:
            if self.items.pop(key, None) is None:
                return
        else:
            self.items[key] = kv
        for listener in self.listeners:
            try:
                listener(key, kv)
            except Exception:
                log.exception("a mirror listener failed on %s", key)

    async def _run(self) -> None:
        while True:
            try:
                kvs, revision = await self._etcd.range(self._prefix)
                fresh = {kv.key: kv for kv in kvs}
                for key in [k for k in self.items if k not in fresh]:
                    self._set(key, None)
                for key, kv in fresh.items():
                    if self.items.get(key) != kv:
                        self._set(key, kv)
                self.revision = revision
                self.synced_at = time.monotonic()
                self._loaded.set()
                async for events in self._etcd.watch(self._prefix, revision + 1):
                    for event in events:
                        self._set(event.kv.key, event.kv if event.type == "PUT" else None)
                        self.revision = max(self.revision, event.kv.mod_revision)
                    self.synced_at = time.monotonic()
            except asyncio.CancelledError:
                raise
            except EtcdError as exc:
                log.debug("etcd mirror: %s; reading again", exc)
            except Exception:
                log.exception("etcd mirror failed; reading again")
            await asyncio.sleep(RETRY_S)
