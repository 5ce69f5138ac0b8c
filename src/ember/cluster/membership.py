"""Membership: this daemon's record under a lease, kept alive, and the other members as last seen.

A member writes ``/ember/hosts/<name>`` under a lease of ``lease_s`` seconds and
renews it three times a lease; it rewrites the record with fresh figures (free
memory, load, pool, templates) every few seconds. When it stops renewing (it
died, or lost etcd), etcd deletes the record at the lease's end and the others
take it out of placement; ``down_since`` remembers when each member left, which
the catalog's grace period counts from.

``writable`` says whether etcd took a write from us recently: while it does not
(no quorum, or no member reachable), creates are refused, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ember.cluster.etcd import Etcd, EtcdError, KeyValue
from ember.cluster.mirror import Mirror
from ember.cluster.records import HOSTS, HostRecord
from ember.cluster.settings import ClusterSettings
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.cluster")

REPORT_S = 2.0
RETRY_S = 0.25


class Membership:
    """This member's lease and record, and the live members; see the module docstring."""

    def __init__(
        self,
        settings: ClusterSettings,
        etcd: Etcd,
        mirror: Mirror,
        report: Callable[[], Awaitable[HostRecord]],
    ) -> None:
        self.settings = settings
        self._etcd = etcd
        self._mirror = mirror
        self._report = report
        self.lease = 0
        self.last_write = 0.0
        self.last_error: str | None = None
        #: Members that left (their record went), by name: when this daemon saw them go.
        self.down_since: dict[str, float] = {}
        #: The last record each member wrote, kept after it leaves (for status and errors).
        self.last_seen: dict[str, HostRecord] = {}
        #: Set each time this member (re)joins with a new lease.
        self.joined = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        mirror.listeners.append(self._on_change)

    @property
    def name(self) -> str:
        return self.settings.name

    # ------------------------------------------------------------ what others see

    def hosts(self, role: str | None = "host") -> list[HostRecord]:
        """The live members (of ``role``; None: all)."""
        found = [HostRecord.from_json(kv.value) for kv in self._mirror.under(HOSTS)]
        return [h for h in found if role is None or h.role == role]

    def host(self, name: str) -> HostRecord | None:
        kv = self._mirror.items.get(HOSTS + name)
        return HostRecord.from_json(kv.value) if kv is not None else None

    @property
    def writable(self) -> bool:
        """etcd committed a write of ours within the last lease (so it has quorum and we are in)."""
        return self.lease != 0 and time.monotonic() - self.last_write < self.settings.lease_s

    def _on_change(self, key: str, kv: KeyValue | None) -> None:
        if not key.startswith(HOSTS):
            return
        name = key[len(HOSTS) :]
        if kv is None:
            self.down_since.setdefault(name, time.time())
            log.warning("cluster member %s left (its lease ended)", name)
        else:
            if name in self.down_since:
                log.info("cluster member %s is back", name)
            self.down_since.pop(name, None)
            self.last_seen[name] = HostRecord.from_json(kv.value)

    # ------------------------------------------------------------ our own record

    async def join(self) -> None:
        """Take a lease and write our record (raises EtcdUnavailable when etcd cannot)."""
        existing = await self._etcd.get(HOSTS + self.name)
        if existing is not None and existing.lease:
            other = HostRecord.from_json(existing.value)
            if other.started_at and other.address != self.settings.advertise:
                raise EtcdError(
                    f"another member named {self.name!r} ({other.address}) is in the cluster; "
                    "give this one another name (EMBER_CLUSTER_NAME)"
                )
        self.lease = await self._etcd.grant(self.settings.lease_s)
        await self._write()
        self.joined.set()
        log.info("joined the cluster as %s (%s, lease %x)", self.name, self.settings.role, self.lease)

    async def _write(self) -> None:
        record = await self._report()
        record.lease = self.lease
        record.updated_at = time.time()
        revision = await self._etcd.put(HOSTS + self.name, record.to_json(), lease=self.lease)
        self._mirror.apply(KeyValue(HOSTS + self.name, record.to_json(), revision, revision, 1, self.lease))
        self.last_write = time.monotonic()
        self.last_error = None

    def report_soon(self) -> None:
        """Write our record now rather than at the next report (the figures changed)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-membership")

    async def leave(self) -> None:
        """Stop renewing and revoke the lease: our record goes at once, not at the lease's end."""
        await cancel_and_wait(self._task)
        self._task = None
        if self.lease:
            with contextlib.suppress(EtcdError):
                await self._etcd.revoke(self.lease)
            self.lease = 0

    async def _run(self) -> None:
        renew_s = self.settings.lease_s / 3
        next_renewal = time.monotonic() + renew_s
        next_report = time.monotonic() + REPORT_S
        while True:
            delay = max(0.0, min(next_renewal, next_report) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            try:
                if self.lease == 0:
                    await self.join()
                    next_renewal, next_report = time.monotonic() + renew_s, time.monotonic() + REPORT_S
                    continue
                # The lease is renewed on its own schedule: writing the record does not renew it.
                if time.monotonic() >= next_renewal:
                    if await self._etcd.keepalive(self.lease) <= 0:
                        log.warning("our lease %x expired; joining again", self.lease)
                        self.lease = 0
                        self.joined.clear()
                        continue
                    self.last_write = time.monotonic()
                    self.last_error = None
                    next_renewal = time.monotonic() + renew_s
                if self._wake.is_set() or time.monotonic() >= next_report:
                    self._wake.clear()
                    await self._write()
                    next_report = time.monotonic() + REPORT_S
            except asyncio.CancelledError:
                raise
            except EtcdError as exc:
                if "lease not found" in str(exc):
                    self.lease = 0
                    self.joined.clear()
                if self.last_error is None:
                    log.warning("cluster membership: etcd did not take our renewal: %s", exc)
                self.last_error = str(exc)
                # A renewal that failed is tried again soon, not a third of a lease later.
                next_renewal = min(next_renewal, time.monotonic() + RETRY_S)
                next_report = max(next_report, time.monotonic() + RETRY_S)
            except Exception:
                log.exception("cluster membership pass failed")
