"""A daemon as a member of the cluster: what it owns, in what order it starts and stops.

A ``Node`` owns the etcd client, the mirror of etcd, its membership, the
catalog, the cluster-wide key store and the forwarder; a host's node also owns
the catalog's sync with its engine and the snapshot copies in and out. ``mount``
puts it in front of a daemon's app (the router, the cluster's routes) and into
its lifespan:

start: etcd reachable -> the cluster token -> the mirror loaded -> keys from etcd
-> join (lease, record) -> sync with the engine. stop: leave placement and revoke
the lease -> mark this host's sandboxes ended (the engine is about to end them) ->
the engine stops -> the rest closes. A node whose etcd has no quorum at start still
serves its own sandboxes and joins when it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from fastapi import FastAPI

from ember import errors
from ember.cluster import placement
from ember.cluster.catalog import Catalog
from ember.cluster.etcd import Etcd, EtcdError, EtcdUnavailable, absent, put_op, wait_ready
from ember.cluster.keystore import ClusterKeyStore
from ember.cluster.membership import Membership
from ember.cluster.mirror import Mirror
from ember.cluster.proxy import Forwarder
from ember.cluster.records import ROOT, SECRET, HostRecord, TemplateEntry
from ember.cluster.settings import ClusterSettings
from ember.cluster.sync import HostSync
from ember.cluster.transfer import Exports, Imports, export_routes
from ember.engine import SandboxManager
from ember.engine.limits import free_memory_mib, total_memory_mib
from ember.engine.quotas import Usage
from ember.engine.store import Store
from ember.server.deps import bearer_token, ember_version
from ember.server.e2b.control import DEFAULT_TEMPLATES
from ember.settings import Settings
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.cluster")
# Every etcd renewal and forwarded request would be a line of the daemon's log.
logging.getLogger("httpx").setLevel(logging.WARNING)

START_WAIT_S = 15.0
#: A create's shape when it does not say (the API's defaults).
DEFAULT_MEMORY_MIB = 512


class Node:
    def __init__(
        self,
        settings: ClusterSettings,
        engine_settings: Settings,
        store: Store,
        manager: SandboxManager | None = None,
    ) -> None:
        self.settings = settings
        self.engine_settings = engine_settings
        self.manager = manager
        # Each call's deadline fits a renewal in a third of a lease, failed-over included.
        self.etcd = Etcd(
            settings.endpoints, settings.etcd_tls, timeout_s=min(2.0, max(0.5, settings.lease_s / 3))
        )
        self.mirror = Mirror(self.etcd, ROOT)
        self.membership = Membership(settings, self.etcd, self.mirror, self.report)
        self.catalog = Catalog(self.etcd, self.mirror, self.membership, settings.grace_s)
        self.keys = ClusterKeyStore(store, self.etcd, self.mirror)
        self.forwarder = Forwarder(settings.name, settings.peer_tls)
        self.sync: HostSync | None = None
        self.exports: Exports | None = None
        self.imports: Imports | None = None
        if manager is not None:
            self.sync = HostSync(manager, self.membership, self.catalog)
            self.sync.want_template = self._want_template
            self.exports = Exports(manager, token="")
            self.imports = Imports(manager, self.forwarder.client, token="")
            manager.registry = self.sync
            manager.quotas.held = self.usage
        self._pending: dict[str, int] = defaultdict(int)
        self._copies: dict[str, asyncio.Task[None]] = {}
        #: Templates this host cannot run (their guest images are not here): never fetched again.
        self._uncopyable: set[str] = set()
        self._started_at = time.time()

    @property
    def me(self) -> str:
        return self.settings.name

    # ------------------------------------------------------------ lifecycle

    def mount(self, app: FastAPI) -> FastAPI:
        """Put this node in front of ``app`` and into its lifespan (see the module docstring)."""
        from ember.cluster.router import ClusterRouter
        from ember.cluster.routes import status_routes

        app.include_router(status_routes(self))
        if self.exports is not None:
            app.include_router(export_routes(self.exports))
        app.add_middleware(ClusterRouter, node=self)
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
            async with inner(app) as state:
                await self.start()
                try:
                    yield state
                finally:
                    await self.leave()
            await self.close()

        app.router.lifespan_context = lifespan
        return app

    async def start(self) -> None:
        try:
            await wait_ready(self.etcd, START_WAIT_S)
            token = await self._token()
        except EtcdUnavailable as exc:
            raise SystemExit(
                f"etcd at {', '.join(self.settings.endpoints)} cannot take writes ({exc}); "
                "start the etcd cluster first (see the README's 'Many hosts')"
            ) from exc
        if self.exports is not None and self.imports is not None:
            self.exports.token = self.imports.token = token
        self.mirror.start()
        await self.mirror.loaded(START_WAIT_S)
        self.keys.load()
        await anyio.to_thread.run_sync(_bootstrap_keys, self.keys)
        await self.membership.join()
        self.membership.start()
        self.catalog.start()
        if self.sync is not None:
            await self.sync.sync()
            self.sync.start()

    async def leave(self) -> None:
        """Out of placement, and this host's sandboxes marked ended: the engine ends them next."""
        if self.sync is not None:
            await self.sync.close()
        await self.catalog.close()
        await self.membership.leave()
        if self.manager is None:
            return
        with contextlib.suppress(EtcdError):
            for kv, entry in self.catalog.entries():
                if entry.host == self.me and entry.state == "running":
                    entry.state, entry.ended_at, entry.end_reason = (
                        "ended",
                        time.time(),
                        "the daemon shut down",
                    )
                    await self.catalog.update(kv, entry)

    async def close(self) -> None:
        await cancel_and_wait(*self._copies.values())
        if self.imports is not None:
            await self.imports.close()
        await self.mirror.close()
        await self.forwarder.close()
        await self.etcd.close()

    async def _token(self) -> str:
        """The token hosts show each other: made by the first member, read by the rest."""
        await self.etcd.txn([absent(SECRET)], [put_op(SECRET, secrets.token_hex(32).encode())])
        found = await self.etcd.get(SECRET)
        assert found is not None
        return found.value.decode()

    # ------------------------------------------------------------ this host's report

    async def report(self) -> HostRecord:
        record = HostRecord(
            name=self.me,
            address=self.settings.advertise,
            role=self.settings.role,
            started_at=self._started_at,
            version=ember_version(),
            vcpus=os.cpu_count() or 1,
            memory_mib=total_memory_mib(),
            load1=os.getloadavg()[0],
        )
        if self.manager is not None:
            manager = self.manager
            record.free_memory_mib = max(free_memory_mib(), 0)
            record.free_disk_mib = shutil.disk_usage(manager.settings.data_dir).free >> 20
            record.sandboxes = len(manager.list())
            record.pool = {str(s["template"]): int(s["ready"]) for s in manager.pool_stats()}  # type: ignore[call-overload]
            record.templates = {
                s.name: s.id for s in manager.store.snapshots() if s.kind == "template" and s.name
            }
        return record

    def usage(self, owner: str) -> Usage:
        """What ``owner`` holds in the whole cluster, for its quota: this host's own count
        and what the catalog says the other hosts run and keep. A create is in the catalog
        from its admission on, so two creates of one key racing on two hosts can both pass
        only within the time one's entry takes to reach the other's mirror (milliseconds)."""
        assert self.manager is not None
        here = self.manager.usage(owner)
        kept_here = {s.id for s in self.manager.snapshots.list(owner)}
        running = [
            e
            for _, e in self.catalog.entries()
            if e.owner == owner and e.host != self.me and e.state == "running"
        ]
        kept = [
            e
            for _, e in self.catalog.snapshots()
            if e.owner == owner and e.kind == "snapshot" and not e.deleted and e.id not in kept_here
        ]
        return here + Usage(
            sandboxes=len(running),
            vcpus=sum(e.vcpus for e in running),
            memory_mb=sum(e.memory_mib for e in running),
            snapshots=len(kept),
            snapshot_bytes=sum(e.size_bytes for e in kept),
        )

    # ------------------------------------------------------------ what the router asks

    def runs(self, sandbox_id: str) -> bool:
        if self.manager is None:
            return False
        try:
            self.manager.get(sandbox_id)
        except errors.SandboxNotFoundError:
            return False
        return True

    def caller(self, surface: str, scope: dict[str, Any]) -> str | None:
        """The id of the request's API key, None when it has no valid one."""
        headers = dict(scope.get("headers", []))
        raw = headers.get(b"x-api-key") if surface != "ember" else headers.get(b"authorization")
        secret = raw.decode("latin-1") if raw else None
        if surface == "ember":  # a bearer token, or (WebSockets) ?api_key=
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            secret = bearer_token(secret) or next(iter(query.get("api_key", [])), None)
        try:
            return self.keys.verify(secret).id
        except errors.EmberError:
            return None

    def require_writable(self) -> None:
        if not self.membership.writable:
            raise errors.ClusterUnavailableError(
                "the cluster's etcd takes no writes now (no quorum, or unreachable: "
                f"{self.membership.last_error or 'not joined yet'}); running sandboxes keep serving, "
                "creates are refused until etcd is back"
            )

    def away(self, host: str, what: str) -> errors.HostUnavailableError:
        since = self.membership.down_since.get(host)
        if since is None:
            return errors.HostUnavailableError(
                f"host {host}, where {what} lives, did not answer; try again shortly"
            )
        left = max(0.0, self.settings.grace_s - (time.time() - since))
        return errors.HostUnavailableError(
            f"host {host}, where {what} lives, left the cluster {time.time() - since:.0f} s ago "
            f"(its lease expired); unless it comes back, its sandboxes are reported lost in {left:.0f} s"
        )

    async def holder_of(self, kind: str, name: str) -> str | None:
        """The live host to answer for snapshot or template ``name``; None: nobody knows it."""
        if self.manager is not None:
            store = self.manager.store
            found = store.snapshot_named(name) if kind == "template" else store.get_snapshot(name)
            if found is not None and found.state == "ready":
                return self.me
        if kind == "template":
            template = self.catalog.template(name)
            if template is None:
                return None
            name = template.snapshot_id
        entry = await self.catalog.lookup_snapshot(name)
        if entry is None or entry.deleted:
            return None
        live = self._live_holders(entry.holders, entry.origin)
        if not live:
            raise self.away(entry.holders[0] if entry.holders else "?", f"{kind} {name}")
        return live[0]

    def _live_holders(self, holders: list[str], origin: str = "") -> list[str]:
        alive = {h.name for h in self.membership.hosts()}
        return sorted((h for h in holders if h in alive), key=lambda h: h != origin)

    async def resolve(
        self, surface: str, body: dict[str, Any], pinned: str | None = None
    ) -> tuple[placement.Want, str | None]:
        """What a create asks of its host, and the snapshot id its host must hold first (if any)."""
        memory = body.get("memory_mb") if surface == "ember" else None
        memory = memory if isinstance(memory, int) and not isinstance(memory, bool) else DEFAULT_MEMORY_MIB
        if surface == "ember":
            snapshot_id, template = body.get("snapshot"), body.get("template")
        else:
            template_id = body.get("templateID") or "base"
            snapshot_id = template = None
            if template_id in DEFAULT_TEMPLATES:
                template = "base"
            elif isinstance(template_id, str) and await self.catalog.lookup_snapshot(template_id) is not None:
                snapshot_id = template_id
            else:
                template = template_id
        if not isinstance(snapshot_id, str):
            snapshot_id = None
        if not isinstance(template, str):
            template = None
        holders: list[str] = []
        if snapshot_id is not None:
            entry = await self.catalog.lookup_snapshot(snapshot_id)
            if entry is not None and not entry.deleted:
                memory, holders = entry.memory_mib, entry.holders
        elif template is not None:
            named = self.catalog.template(template)
            shared = self.catalog.snapshot(named.snapshot_id) if named else None
            if shared is not None:
                memory, holders, snapshot_id = shared.memory_mib, shared.holders, shared.id
        elif surface == "ember":
            template = "base"  # a plain create resumes template base where it has the shape asked
        want = placement.Want(memory, holders=holders, template=template, pinned=pinned)
        return want, snapshot_id

    def rank(self, want: placement.Want) -> list[HostRecord]:
        committed, count = self.catalog.load()
        load = placement.Load(committed, count, dict(self._pending))
        return placement.rank(self.membership.hosts(), want, load, self.settings.choices)

    def no_room(self, want: placement.Want) -> errors.EmberError:
        hosts = self.membership.hosts()
        if want.pinned is not None and want.pinned not in {h.name for h in hosts}:
            return self.away(want.pinned, "the host asked for")
        if not hosts:
            return errors.ResourceExhaustedError(
                "no host is in the cluster now: start one (ember serve --cluster)"
            )
        free = ", ".join(f"{h.name} {h.free_memory_mib} MiB" for h in hosts)
        return errors.ResourceExhaustedError(
            f"no host of the cluster can take a sandbox of {want.memory_mib} MiB now (free: {free}); "
            "ask for less, end other sandboxes or add a host"
        )

    @contextlib.contextmanager
    def placing(self, host: str, memory_mib: int) -> Iterator[None]:
        """Count a create sent to ``host`` in its load until it answered (then the catalog has it)."""
        self._pending[host] += memory_mib
        try:
            yield
        finally:
            self._pending[host] -= memory_mib

    async def ensure_local(self, snapshot_id: str | None) -> None:
        """Copy ``snapshot_id`` here from a live holder unless this host holds it already."""
        if snapshot_id is None or self.manager is None or self.imports is None or self.sync is None:
            return
        found = self.manager.store.get_snapshot(snapshot_id)
        if found is not None and found.state == "ready":
            return
        entry = await self.catalog.lookup_snapshot(snapshot_id)
        if entry is None or entry.deleted:
            return  # the engine answers snapshot_not_found
        live = self._live_holders(entry.holders, entry.origin)
        if not live:
            raise self.away(entry.holders[0] if entry.holders else "?", f"snapshot {snapshot_id}")
        holder = self.membership.host(live[0])
        assert holder is not None
        await self.imports.fetch(snapshot_id, holder)
        await self.sync.saved()
        self.membership.report_soon()

    def _want_template(self, entry: TemplateEntry) -> None:
        """Copy a template built elsewhere ahead of time, in the background (one copy per snapshot)."""
        if entry.snapshot_id in self._copies or entry.snapshot_id in self._uncopyable:
            return

        async def copy() -> None:
            try:
                await self.ensure_local(entry.snapshot_id)
                log.info("template %s (%s) is here now", entry.name, entry.snapshot_id)
            except errors.SnapshotIncompatibleError as exc:
                self._uncopyable.add(entry.snapshot_id)  # it stays on the hosts that can run it
                log.warning("template %s is not copied here: %s", entry.name, exc)
            except errors.EmberError as exc:
                log.warning("could not copy template %s from %s yet: %s", entry.name, entry.origin, exc)
            finally:
                self._copies.pop(entry.snapshot_id, None)

        self._copies[entry.snapshot_id] = asyncio.create_task(copy(), name=f"template-{entry.name}")


def _bootstrap_keys(keys: ClusterKeyStore) -> None:
    from ember.server.daemon import bootstrap_keys

    bootstrap_keys(keys)
