"""The catalog: which host runs each sandbox and holds each snapshot, and who is lost.

A host writes a sandbox's entry itself, in one transaction with the proof that it
is still a member (its record, which lives only as long as its lease, exists) and
that the id is free or already its own; so an id names exactly one host, and a host
that has left the cluster can add nothing to it. Entries are read from the mirror;
one missing there is asked of etcd once (it may be younger than the mirror).

When a host leaves, one member (the live one with the smallest name, so that no
election is needed) waits out the grace period and then marks each of its running
sandboxes ``lost``, with the reason, in a transaction that holds only while the
host is still away. Nothing is ever deleted for a host's absence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict

from ember import errors
from ember.cluster.etcd import (
    Etcd,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    absent,
    delete_op,
    present,
    put_op,
    unchanged,
)
from ember.cluster.membership import Membership
from ember.cluster.mirror import Mirror
from ember.cluster.records import (
    HOSTS,
    SANDBOXES,
    SNAPSHOTS,
    TEMPLATES,
    SandboxEntry,
    SnapshotEntry,
    TemplateEntry,
)
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.cluster")

REPORT_S = 1.0


def unavailable(exc: EtcdError, doing: str) -> errors.ClusterUnavailableError:
    return errors.ClusterUnavailableError(
        f"the cluster's etcd cannot {doing} now ({exc}); running sandboxes keep serving, "
        "try again once etcd has its quorum back"
    )


class Catalog:
    def __init__(self, etcd: Etcd, mirror: Mirror, membership: Membership, grace_s: float) -> None:
        self._etcd = etcd
        self._mirror = mirror
        self._membership = membership
        self.grace_s = grace_s
        self._reporter: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch for hosts that left: every member does, the reporter acts (``report_lost``)."""
        self._reporter = asyncio.create_task(self._report_forever(), name="cluster-lost-reporter")

    async def close(self) -> None:
        await cancel_and_wait(self._reporter)
        self._reporter = None

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_S)
            try:
                await self.report_lost()
            except EtcdError as exc:
                log.debug("reporting lost sandboxes: %s", exc)
            except Exception:
                log.exception("reporting lost sandboxes failed")

    # ------------------------------------------------------------ reading

    def kv(self, key: str) -> KeyValue | None:
        return self._mirror.items.get(key)

    async def exists(self, key: str) -> bool:
        """Whether etcd has ``key`` now (asked of etcd itself, not of the mirror)."""
        return await self._etcd.get(key) is not None

    def entry(self, sandbox_id: str) -> SandboxEntry | None:
        kv = self._mirror.items.get(SANDBOXES + sandbox_id)
        return SandboxEntry.from_json(kv.value) if kv is not None else None

    async def lookup(self, sandbox_id: str) -> SandboxEntry | None:
        """The entry from the mirror, else from etcd (a member's own copy: it answers without quorum)."""
        found = self.entry(sandbox_id)
        if found is not None or not _plausible(sandbox_id):
            return found
        try:
            kv = await self._etcd.get(SANDBOXES + sandbox_id, serializable=True)
        except EtcdError:
            return None
        return SandboxEntry.from_json(kv.value) if kv is not None else None

    def entries(self) -> list[tuple[KeyValue, SandboxEntry]]:
        return [(kv, SandboxEntry.from_json(kv.value)) for kv in self._mirror.under(SANDBOXES)]

    def snapshot(self, snapshot_id: str) -> SnapshotEntry | None:
        kv = self._mirror.items.get(SNAPSHOTS + snapshot_id)
        return SnapshotEntry.from_json(kv.value) if kv is not None else None

    async def lookup_snapshot(self, snapshot_id: str) -> SnapshotEntry | None:
        found = self.snapshot(snapshot_id)
        if found is not None or not _plausible(snapshot_id):
            return found
        try:
            kv = await self._etcd.get(SNAPSHOTS + snapshot_id, serializable=True)
        except EtcdError:
            return None
        return SnapshotEntry.from_json(kv.value) if kv is not None else None

    def snapshots(self) -> list[tuple[KeyValue, SnapshotEntry]]:
        return [(kv, SnapshotEntry.from_json(kv.value)) for kv in self._mirror.under(SNAPSHOTS)]

    def template(self, name: str) -> TemplateEntry | None:
        kv = self._mirror.items.get(TEMPLATES + name)
        return TemplateEntry.from_json(kv.value) if kv is not None else None

    def templates(self) -> list[tuple[KeyValue, TemplateEntry]]:
        return [(kv, TemplateEntry.from_json(kv.value)) for kv in self._mirror.under(TEMPLATES)]

    def load(self) -> tuple[dict[str, int], dict[str, int]]:
        """Memory committed and sandboxes running, per host, as the catalog has them."""
        committed: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        for _, entry in self.entries():
            if entry.state == "running":
                committed[entry.host] += entry.memory_mib
                count[entry.host] += 1
        return committed, count

    # ------------------------------------------------------------ writing

    async def register(self, entry: SandboxEntry) -> None:
        """Write ``entry`` for this host: the id must be free or this host's already.

        etcd without a leader for a moment (a member died, the others elect another) is
        waited out for up to a lease; no quorum for longer refuses the sandbox.
        """
        deadline = time.monotonic() + self._membership.settings.lease_s
        while True:
            try:
                return await self._register(entry)
            except EtcdUnavailable as exc:
                if time.monotonic() > deadline:
                    raise unavailable(exc, "record the sandbox") from exc
                await asyncio.sleep(0.2)

    async def _register(self, entry: SandboxEntry) -> None:
        key, member = SANDBOXES + entry.id, HOSTS + self._membership.name
        for _ in range(3):
            current = await self._etcd.get(key)
            if current is not None:
                owner = SandboxEntry.from_json(current.value).host
                if owner != entry.host:
                    raise errors.AlreadyExistsError(f"sandbox id {entry.id} is taken on host {owner}")
            guard = absent(key) if current is None else unchanged(current)
            revision = await self._etcd.txn([guard, present(member)], [put_op(key, entry.to_json())])
            if revision:
                self._mirror.apply(KeyValue(key, entry.to_json(), revision, revision, 1))
                return
            if await self._etcd.get(member) is None:
                raise errors.ClusterUnavailableError(
                    f"host {self._membership.name} is not a member of the cluster now (its lease "
                    "ended); it joins again by itself, try again in a few seconds"
                )
        raise errors.ClusterUnavailableError(f"sandbox {entry.id} could not be recorded (it kept changing)")

    async def update(self, kv: KeyValue, entry: SandboxEntry | SnapshotEntry | TemplateEntry) -> bool:
        """Rewrite the entry read as ``kv`` unless it changed since; False when it had."""
        revision = await self._etcd.txn([unchanged(kv)], [put_op(kv.key, entry.to_json())])
        if revision:
            self._mirror.apply(dataclasses.replace(kv, value=entry.to_json(), mod_revision=revision))
        return bool(revision)

    async def create(self, key: str, entry: SnapshotEntry | TemplateEntry) -> bool:
        revision = await self._etcd.txn([absent(key)], [put_op(key, entry.to_json())])
        if revision:
            self._mirror.apply(KeyValue(key, entry.to_json(), revision, revision, 1))
        return bool(revision)

    async def remove(self, kv: KeyValue) -> bool:
        revision = await self._etcd.txn([unchanged(kv)], [delete_op(kv.key)])
        if revision:
            self._mirror.apply(kv, deleted=True)
        return bool(revision)

    # ------------------------------------------------------------ hosts that left

    def is_reporter(self) -> bool:
        """Whether this member reports the lost: the live member with the smallest name."""
        live = [h.name for h in self._membership.hosts(role=None)]
        return self._membership.writable and bool(live) and min(live) == self._membership.name

    async def report_lost(self) -> int:
        """Mark lost the running sandboxes of hosts away for longer than the grace period."""
        if not self.is_reporter():
            return 0
        live = {h.name for h in self._membership.hosts(role=None)}
        now = time.time()
        marked = 0
        for kv, entry in self.entries():
            if entry.state != "running" or entry.host in live:
                continue
            since = self._membership.down_since.setdefault(entry.host, now)
            if now - since < self.grace_s:
                continue
            seen = self._membership.last_seen.get(entry.host)
            last = (
                time.strftime("%H:%M:%S", time.localtime(seen.updated_at))
                if seen
                else "before this member started"
            )
            lost = dataclasses.replace(
                entry,
                state="lost",
                ended_at=now,
                end_reason=(
                    f"lost with its host {entry.host}: the host stopped renewing its cluster lease "
                    f"(last report {last}) and did not come back within {self.grace_s:g} s"
                ),
            )
            revision = await self._etcd.txn(
                [unchanged(kv), absent(HOSTS + entry.host)], [put_op(kv.key, lost.to_json())]
            )
            if revision:
                self._mirror.apply(dataclasses.replace(kv, value=lost.to_json(), mod_revision=revision))
                marked += 1
        if marked:
            log.warning("reported %d sandboxes lost with the hosts that left", marked)
        return marked


def _plausible(identifier: str) -> bool:
    """Ids worth asking etcd about (not a path segment like 'list', nor something huge)."""
    return 0 < len(identifier) <= 64 and identifier.isalnum()
