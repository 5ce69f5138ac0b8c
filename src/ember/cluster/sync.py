"""A host's side of the catalog: its engine's sandboxes, snapshots and templates, kept in step.

``HostSync`` is the engine's registry on a cluster host. A sandbox is written into
the catalog before the engine hands it out (a create refused by etcd ends the new
sandbox and answers ``cluster_unavailable``); snapshots and templates are published
before the call that made them answers. Everything else is reconciled by ``sync``,
every few seconds and after each change, always in the same direction of safety:

- a sandbox this host runs that the catalog calls lost (the host was away longer
  than the grace period) or gives to another host is ended, with that reason;
  one the catalog lacks is written in (it runs, so it belongs to this host);
- an entry of this host whose sandbox ended is marked ended with the engine's reason;
- a snapshot this host holds is listed with its holders; one it held and deleted
  is marked deleted, which makes every other holder delete its copy;
- the newest build of each template, on any host, is what its name means everywhere.

A failed write (no quorum) changes nothing here: the next pass tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from ember import errors
from ember.cluster.catalog import Catalog
from ember.cluster.etcd import EtcdError
from ember.cluster.membership import Membership
from ember.cluster.records import SNAPSHOTS, TEMPLATES, SandboxEntry, SnapshotEntry, TemplateEntry
from ember.engine import SandboxManager
from ember.engine.registry import Registry
from ember.engine.store import SandboxRecord, SnapshotRecord
from ember.server.models import SandboxInfo
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.cluster")

SYNC_S = 2.0
#: Kinds of snapshot that other hosts may restore (a fork's lives only for its children).
SHARED_KINDS = ("snapshot", "template")


class HostSync(Registry):
    def __init__(self, manager: SandboxManager, membership: Membership, catalog: Catalog) -> None:
        self._manager = manager
        self._membership = membership
        self._catalog = catalog
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Told of each template this host should fetch (set by the node: it queues a copy).
        self.want_template: Callable[[TemplateEntry], None] | None = None

    @property
    def me(self) -> str:
        return self._membership.name

    # ------------------------------------------------------------ the engine's registry

    async def admit(self, record: SandboxRecord) -> None:
        if not self._membership.writable:
            raise errors.ClusterUnavailableError(
                "the cluster's etcd has taken no write from this host lately (no quorum, or "
                f"unreachable: {self._membership.last_error or 'not joined yet'}); running sandboxes "
                "keep serving, creates resume once etcd is back"
            )
        entry = SandboxEntry(
            id=record.id,
            host=self.me,
            owner=record.owner,
            vcpus=record.vcpus,
            memory_mib=record.memory_mib,
            created_at=record.created_at,
            info=SandboxInfo.of(record).model_dump(),
        )
        await self._catalog.register(entry)
        self._membership.report_soon()

    async def saved(self) -> None:
        try:
            await self.sync()
        except EtcdError as exc:
            log.warning("snapshots not published yet (etcd: %s); the next pass tries again", exc)

    def ended(self, record: SandboxRecord) -> None:
        self._wake.set()

    # ------------------------------------------------------------ reconciling

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-sync")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_S)
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except EtcdError as exc:
                log.debug("cluster sync: %s", exc)
            except Exception:
                log.exception("cluster sync pass failed")

    async def sync(self) -> None:
        """One pass over sandboxes, snapshots and templates (see the module docstring)."""
        async with self._lock:
            await self._sandboxes()
            await self._snapshots()
            await self._templates()

    async def _sandboxes(self) -> None:
        running = {s.id: s for s in self._manager.list()}
        for sandbox_id, sandbox in running.items():
            entry = self._catalog.entry(sandbox_id)
            if entry is not None and (entry.host != self.me or entry.state == "lost"):
                reason = (
                    entry.end_reason if entry.state == "lost" else f"the catalog gives it to {entry.host}"
                )
                log.warning("ending sandbox %s: %s", sandbox_id, reason)
                with contextlib.suppress(errors.SandboxNotFoundError):
                    await self._manager.destroy(sandbox_id, f"reported lost by the cluster ({reason})")
            elif (entry is None or entry.state != "running") and sandbox.state.value == "running":
                with contextlib.suppress(errors.EmberError):
                    await self.admit(sandbox.record)
        for kv, entry in self._catalog.entries():
            if entry.host != self.me or entry.state != "running" or entry.id in running:
                continue
            try:
                record = self._manager.record(entry.id)
            except errors.SandboxNotFoundError:
                record = None
            ended = dataclasses.replace(
                entry,
                state="ended",
                ended_at=record.ended_at if record else None,
                end_reason=(record.end_reason if record else None) or "ended",
            )
            await self._catalog.update(kv, ended)

    async def _snapshots(self) -> None:
        local = {
            s.id: s
            for s in self._manager.store.snapshots()
            if s.kind in SHARED_KINDS and (s.kind != "template" or s.name)
        }
        listed = {entry.id: (kv, entry) for kv, entry in self._catalog.snapshots()}
        for snapshot_id, snapshot in local.items():
            if snapshot_id not in listed:
                await self._catalog.create(SNAPSHOTS + snapshot_id, self._entry(snapshot))
        for snapshot_id, (kv, entry) in listed.items():
            held = snapshot_id in local
            deleted = entry.deleted
            if deleted and held:
                await self._delete_local(local[snapshot_id])
                held = False
            elif self.me in entry.holders and not held and not deleted:
                log.info("snapshot %s was deleted here: every copy goes", snapshot_id)
                deleted = True
            holders = sorted({h for h in entry.holders if h != self.me} | ({self.me} if held else set()))
            if deleted and not holders:
                await self._catalog.remove(kv)
            elif (holders, deleted) != (sorted(entry.holders), entry.deleted):
                await self._catalog.update(kv, dataclasses.replace(entry, holders=holders, deleted=deleted))

    def _entry(self, snapshot: SnapshotRecord) -> SnapshotEntry:
        return SnapshotEntry(
            id=snapshot.id,
            owner=snapshot.owner,
            kind=snapshot.kind,
            holders=[self.me],
            origin=self.me,
            name=snapshot.name,
            vcpus=snapshot.vcpus,
            memory_mib=snapshot.memory_mib,
            created_at=snapshot.created_at,
            size_bytes=snapshot.size_bytes,
        )

    async def _delete_local(self, snapshot: SnapshotRecord) -> None:
        log.info("deleting this host's copy of snapshot %s (deleted on another host)", snapshot.id)
        self._manager.snapshots.delete(snapshot)
        await self._manager.collect()

    async def _templates(self) -> None:
        local = {s.name: s for s in self._manager.store.snapshots() if s.kind == "template" and s.name}
        for name, snapshot in local.items():
            current = self._catalog.template(name)
            if current is None or (
                current.snapshot_id != snapshot.id and snapshot.created_at > current.created_at
            ):
                entry = TemplateEntry(name, snapshot.id, self.me, snapshot.created_at)
                kv = self._catalog.kv(TEMPLATES + name)
                if kv is None:
                    await self._catalog.create(TEMPLATES + name, entry)
                else:
                    await self._catalog.update(kv, entry)
        for kv, entry in self._catalog.templates():
            shared = self._catalog.snapshot(entry.snapshot_id)
            if (shared is not None and shared.deleted) or (
                shared is None and not await self._catalog.exists(SNAPSHOTS + entry.snapshot_id)
            ):
                await self._catalog.remove(kv)  # its snapshot went: the name means nothing now
                continue
            mine = local.get(entry.name)
            newer = mine is None or (mine.id != entry.snapshot_id and entry.created_at > mine.created_at)
            if newer and self.want_template is not None:
                self.want_template(entry)
