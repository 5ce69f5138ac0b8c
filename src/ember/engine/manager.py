"""SandboxManager: the registry of this host's sandboxes; creates, finds, lists and ends them.

The manager picks the VMM driver and acceleration once, checks every request
against the host and the owner's quota before a VM exists, and gives each
sandbox its own run directory (sockets, console, memory file; on tmpfs) and its
own top disk layer (``disks``). It keeps every sandbox's record in the store.
The rest is in modules of their own, which the manager's methods of the same
names call: taking and restoring snapshots (``snapshots``), ``forks``,
``pauses``, ``templates`` (and the ``imports`` of OCI images they boot from), the
``reaper`` (lifetimes), and on ``start`` the ``recovery`` of what a previous daemon left.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from ember import errors
from ember.engine import forks, limits, pauses, templates
from ember.engine.disks import Layers, check_disk, root_reserve_mib
from ember.engine.imports import ImportedImages
from ember.engine.pool import WarmPool
from ember.engine.quotas import Quota, Quotas, Reservation, Usage
from ember.engine.reaper import Reaper
from ember.engine.recovery import recover
from ember.engine.registry import Registry
from ember.engine.sandbox import Sandbox, SandboxConfig, SandboxState, vm_spec
from ember.engine.snapshots import Snapshots
from ember.engine.store import SandboxRecord, SnapshotRecord, Store
from ember.images import GuestImages, ImagesMissing, find_guest_images, guest_debian_mirror
from ember.images.oci import ImportedImage
from ember.network.networks import Networks
from ember.network.policy import NetworkPolicy
from ember.network.policy import parse as parse_network
from ember.settings import Settings
from ember.vmm import QemuDriver, detect
from ember.vmm.base import Restore

log = logging.getLogger("ember.engine")

#: Root-only space below which the start warns (the state database's writes need little).
MIN_ROOT_RESERVE_MIB = 16


class SandboxManager:
    """Owns every sandbox of this engine instance; see the module docstring."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.acceleration = detect(self.settings)
        self.driver = QemuDriver(self.settings, self.acceleration)
        self.store = Store(self.settings.data_dir / "ember.db")
        self.layers = Layers(self.settings)
        self.snapshots = Snapshots(self.settings, self.store, self.layers, self.driver)
        self.imported = ImportedImages(self.settings)
        self.networks = Networks(
            self.settings, self.driver.spawn_helper, partial(guest_debian_mirror, self.settings)
        )
        self.pool = WarmPool(dict(self.settings.pool), self._restore_for_pool)
        #: Limits per owner; whoever keeps the API keys sets ``quotas.limits`` (default: none).
        self.quotas = Quotas(lambda owner: Quota(), self.usage)
        #: Told of every sandbox handed out and snapshot saved (the cluster's catalog, in a cluster).
        self.registry = Registry()
        self._images: GuestImages | None = None
        self._sandboxes: dict[str, Sandbox] = {}
        #: Sandboxes being torn down, by id: a resume under the same id waits for it,
        #: or the old teardown would delete the new run directory under its QEMU.
        self._ending: dict[str, asyncio.Event] = {}
        self.reaper = Reaper(self)

    @property
    def images(self) -> GuestImages:
        if self._images is None:
            try:
                self._images = find_guest_images(self.settings)
            except ImagesMissing as exc:
                raise errors.ImagesMissingError(str(exc)) from exc
        return self._images

    # ------------------------------------------------------------ service lifecycle

    async def start(self) -> None:
        """Recover what a previous daemon left, then start ending expired sandboxes."""
        self.driver.start()
        self._sandboxes.update(
            await recover(self.settings, self.store, self.driver, self.networks, self.snapshots)
        )
        await self.collect()
        self.store.prune()
        if self.settings.jail and root_reserve_mib(self.settings.data_dir) < MIN_ROOT_RESERVE_MIB:
            log.warning(
                "the data directory %s is on a filesystem with no space kept for root: guests that fill it "
                "would leave the daemon unable to record state; give it reserved blocks (tune2fs -m 5) or "
                "put EMBER_DATA_DIR on such a filesystem",
                self.settings.data_dir,
            )
        self.reaper.start()
        self.pool.start()

    async def close(self) -> None:
        """Stop the reaper and the pool and end every sandbox this manager runs."""
        await self.pool.close()
        await self.reaper.close()
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        ended = await asyncio.gather(
            *(s.destroy("the daemon shut down") for s in sandboxes), return_exceptions=True
        )
        for sandbox, result in zip(sandboxes, ended, strict=True):
            if isinstance(result, BaseException):
                log.warning("sandbox %s did not end cleanly at shutdown: %r", sandbox.id, result)
        await self.collect()
        self.snapshots.close()
        await self.networks.close()  # its services process runs under the driver's jail
        await self.driver.close()
        self.store.close()

    # ------------------------------------------------------------ sandboxes

    async def create(
        self,
        *,
        vcpus: int = 2,
        memory_mb: int = 512,
        disk_mb: int = 4096,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        owner: str | None = None,
        template: str | None = None,
        snapshot: str | None = None,
        network: NetworkPolicy | dict[str, object] | str | None = None,
        sandbox_id: str | None = None,
        on_timeout: str = "kill",
    ) -> Sandbox:
        """Start a new sandbox and return it once its agent answers.

        From ``snapshot`` (an id) or ``template`` (a name) it resumes that saved
        VM, with its vCPUs, memory and disk; otherwise it boots a fresh one.
        ``network`` is its policy (``ember.network.parse``; default: none).
        ``sandbox_id`` reuses the id of an ended sandbox (a resume after a pause).
        ``on_timeout="pause"`` pauses it when its lifetime ends instead of ending it.
        """
        policy = parse_network(network)
        limits.check_on_timeout(on_timeout)
        if sandbox_id is not None:
            if (ending := self._ending.get(sandbox_id)) is not None:
                await ending.wait()
            if sandbox_id in self._sandboxes:
                raise errors.AlreadyExistsError(f"sandbox {sandbox_id!r} is running")
        if snapshot is not None:
            source: SnapshotRecord | None = self.snapshots.get(snapshot, owner)
        elif template is not None:
            source = self.snapshots.template(template)
        else:
            # Template base stands in for a boot only when it has the shape asked for.
            source = templates.current_base(self)
            shape = (vcpus, memory_mb, disk_mb)
            if source is not None and (source.vcpus, source.memory_mib, source.disk_mib) != shape:
                source = None
            template = source.name if source is not None else None
        if source is not None:
            self.snapshots.check_restorable(source)
            vcpus, memory_mb, disk_mb = source.vcpus, source.memory_mib, source.disk_mib
        limits.check_duration("timeout", timeout_s)
        limits.check_duration("idle_timeout", idle_timeout_s)
        timeout_s = self.quotas.lifetime(owner, timeout_s)
        config = limits.validate(
            SandboxConfig(
                vcpus=vcpus,
                memory_mib=memory_mb,
                disk_mib=disk_mb,
                env=dict(env or {}),
                metadata=dict(metadata or {}),
                timeout_s=timeout_s,
                idle_timeout_s=idle_timeout_s,
                owner=owner,
                template=template,
                network=policy,
                on_timeout=on_timeout,
            )
        )
        adding = Usage(sandboxes=1, vcpus=config.vcpus, memory_mb=config.memory_mib)
        with self.quotas.reserve(owner, adding) as reservation:
            if sandbox_id is None and source is not None and source.kind == "template" and source.name:
                pooled = self.pool.take(source.name)
                if pooled is not None:
                    reservation.release()  # hand_over makes it the owner's before its first await
                    try:
                        await pooled.hand_over(config)
                    except errors.EmberError as exc:
                        log.warning("pooled sandbox %s failed at hand-over: %s", pooled.id, exc)
                        await self.end(pooled, "failed at hand-over from the warm pool", dead=True)
                        reservation.renew()
                    else:
                        log.info(
                            "sandbox %s from the warm pool in %.1f ms", pooled.id, pooled.boot_seconds * 1000
                        )
                        return await self._admitted(pooled)
            launched = await self.launch(config, source, sandbox_id=sandbox_id, reservation=reservation)
        return await self._admitted(launched)

    async def _admitted(self, sandbox: Sandbox) -> Sandbox:
        """Hand ``sandbox`` out once the registry has it; one it refuses ends, with its reason."""
        try:
            await self.registry.admit(sandbox.record)
        except BaseException as exc:
            await self.end(sandbox, f"not admitted: {exc}", dead=True)
            raise
        return sandbox

    async def launch(
        self,
        config: SandboxConfig,
        source: SnapshotRecord | None,
        pooled: bool = False,
        sandbox_id: str | None = None,
        reservation: Reservation | None = None,
        image: ImportedImage | None = None,
    ) -> Sandbox:
        """Boot a new VM (of Ember's image, or an imported ``image``), or restore ``source``,
        and wait for its agent.

        ``reservation`` (the create's quota use) ends when the sandbox is counted itself.
        """
        check_disk(self.settings.data_dir, self.settings.disk_reserve_mib, "create a sandbox")
        images = self.images
        sandbox_id = sandbox_id or secrets.token_hex(8)
        run_dir = self.settings.run_dir / sandbox_id
        now = time.time()
        record = SandboxRecord(
            id=sandbox_id,
            owner=config.owner,
            state=SandboxState.BOOTING.value,
            vcpus=config.vcpus,
            memory_mib=config.memory_mib,
            disk_mib=config.disk_mib,
            metadata=config.metadata,
            template=config.template,
            created_at=now,
            expires_at=now + config.timeout_s if config.timeout_s is not None else None,
            idle_timeout_s=config.idle_timeout_s,
            hostname=f"ember-{sandbox_id[:12]}",
            run_dir=str(run_dir),
            kernel=source.kernel if source else str(images.kernel),
            kernel_args=source.kernel_args if source else _boot_args(self.driver.kernel_args, image),
            rootfs=source.rootfs if source else str(image.rootfs if image else images.rootfs),
            init=image.init if image and not source else "",
            memory_file=str(source.memory_file if source else run_dir / "memory"),
            memory_shared=source is None,
            snapshot_id=source.id if source else None,
            network=config.network.to_dict() if config.network.enabled else {},
            on_timeout=config.on_timeout,
        )
        # A resumed sandbox takes its old id: whatever its ended run left goes first.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with self.layers.lock:
                if source is None:
                    top = await self.layers.base(config.disk_mib)
                else:
                    top = await self.layers.overlay(Path(source.disk_chain[0]), source.blank_overlay)
                record.disk_chain = [str(top), *(source.disk_chain if source else [])]
                self.store.save(record)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        # The record already names the snapshot's memory file, shape and images: a
        # restore is the same VM, told to load the snapshot's state instead of booting.
        spec = vm_spec(record)
        if source is not None:
            spec = replace(spec, restore=Restore(source.state_file))
        # A restored guest keeps the environment it was saved with unless the caller gives one.
        sandbox_env = config.env if source is None or config.env else None
        sandbox = Sandbox(record, self.driver.create(spec), self.store, self.networks, sandbox_env)
        self._sandboxes[sandbox_id] = sandbox
        if reservation is not None:
            reservation.release()
        try:
            with self.driver.starts.starting():
                await sandbox.boot()
        finally:
            if sandbox.state is not SandboxState.RUNNING:
                self._sandboxes.pop(sandbox_id, None)
                await self.collect()
        if pooled:
            try:
                await sandbox.park(self.settings.pool_warmup)
            except BaseException:
                await self.end(sandbox, "could not join the warm pool", dead=True)
                raise
        how = f"restored from {source.kind} {source.id}" if source else "booted"
        log.info("sandbox %s %s, ready in %.3f s", sandbox_id, how, sandbox.boot_seconds or 0)
        return sandbox

    async def _restore_for_pool(self, template: str) -> Sandbox:
        source = self.snapshots.template(template)
        self.snapshots.check_restorable(source)
        config = SandboxConfig(
            vcpus=source.vcpus, memory_mib=source.memory_mib, disk_mib=source.disk_mib, template=template
        )
        return await self.launch(limits.validate(config), source, pooled=True)

    def pool_stats(self) -> list[dict[str, object]]:
        return self.pool.stats()

    def usage(self, owner: str) -> Usage:
        """What ``owner`` holds: its booting and running sandboxes and its snapshots."""
        live = [s.record for s in self.list(owner=owner)]
        kept = self.snapshots.list(owner)
        return Usage(
            sandboxes=len(live),
            vcpus=sum(r.vcpus for r in live),
            memory_mb=sum(r.memory_mib for r in live),
            snapshots=len(kept),
            snapshot_bytes=sum(s.size_bytes for s in kept),
        )

    def check_snapshot_quota(self, owner: str | None) -> None:
        """One more snapshot, refused once the owner's snapshots hold its byte limit (a snapshot's
        size is known only once taken, so the last one taken may go past it)."""
        self.quotas.check(owner, Usage(snapshots=1, snapshot_bytes=1))

    # ------------------------------------------------------------ snapshots and forks

    async def snapshot(
        self, sandbox_id: str, owner: str | None = None, metadata: dict[str, str] | None = None
    ) -> SnapshotRecord:
        """Snapshot a running sandbox, which runs on; restore it with ``create(snapshot=id)``."""
        limits.check_metadata(metadata or {})
        sandbox = self.get(sandbox_id, owner)
        self.check_snapshot_quota(owner)
        snapshot = await sandbox.snapshot(self.snapshots, metadata=metadata)
        await self.registry.saved()
        return snapshot

    async def fork(
        self, sandbox_id: str, count: int, owner: str | None = None, timing: forks.ForkTiming | None = None
    ) -> list[Sandbox]:
        return await forks.fork(self, sandbox_id, count, owner, timing)

    async def pause(self, sandbox_id: str, owner: str | None = None) -> SnapshotRecord:
        snapshot = await pauses.pause(self, sandbox_id, owner)
        await self.registry.saved()
        return snapshot

    def paused(self, owner: str | None = None) -> list[SnapshotRecord]:
        return pauses.paused(self, owner)

    def paused_snapshot(self, sandbox_id: str, owner: str | None = None) -> SnapshotRecord | None:
        return pauses.paused_snapshot(self, sandbox_id, owner)

    async def resume(
        self, sandbox_id: str, owner: str | None = None, timeout_s: float | None = None
    ) -> Sandbox:
        return await pauses.resume(self, sandbox_id, owner, timeout_s)

    async def ensure_base_template(self) -> SnapshotRecord:
        return await templates.ensure_base(self)

    async def save_template(
        self, sandbox_id: str, name: str, owner: str | None = None, image: dict[str, Any] | None = None
    ) -> SnapshotRecord:
        template = await templates.save(self, sandbox_id, name, owner, image)
        await self.registry.saved()
        return template

    async def delete_template(self, name: str) -> None:
        await templates.delete(self, name)
        await self.registry.saved()

    def list_snapshots(self, owner: str | None = None) -> list[SnapshotRecord]:
        return self.snapshots.list(owner)

    async def delete_snapshot(self, snapshot_id: str, owner: str | None = None) -> None:
        self.snapshots.delete(self.snapshots.get(snapshot_id, owner))
        await self.collect()
        await self.registry.saved()

    async def collect(self) -> None:
        """Delete the files of retired snapshots, layers and imported images that nothing uses any more."""
        async with self.layers.lock:
            live = self.store.list(live_only=True)
            self.snapshots.collect(live)
            kept = self.store.snapshots(include_deleted=True)
            self.imported.collect([*(r.rootfs for r in live), *(s.rootfs for s in kept)])

    def get(self, sandbox_id: str, owner: str | None = None) -> Sandbox:
        """A live sandbox; ended or unknown ones (or another owner's) are not found."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or (owner is not None and sandbox.record.owner != owner):
            raise errors.SandboxNotFoundError(f"no running sandbox {sandbox_id!r}")
        return sandbox

    def record(self, sandbox_id: str, owner: str | None = None) -> SandboxRecord:
        """The record of a live or ended sandbox."""
        live = self._sandboxes.get(sandbox_id)
        record = live.record if live is not None else self.store.get(sandbox_id)
        if record is None or (owner is not None and record.owner != owner):
            raise errors.SandboxNotFoundError(f"no sandbox {sandbox_id!r}")
        return record

    def live(self) -> list[Sandbox]:
        """Every sandbox this manager holds, pooled and dead ones too."""
        return list(self._sandboxes.values())

    def list(self, include_ended: bool = False, owner: str | None = None) -> list[Sandbox]:
        return [
            s
            for s in self._sandboxes.values()
            if s.state is not SandboxState.POOLED
            and (include_ended or s.state in (SandboxState.BOOTING, SandboxState.RUNNING))
            and (owner is None or s.record.owner == owner)
        ]

    def records(self, include_ended: bool = False, owner: str | None = None) -> list[SandboxRecord]:
        """Every sandbox's record, live ones as they are now."""
        records = []
        for record in self.store.list(live_only=not include_ended):
            live = self._sandboxes.get(record.id)
            record = live.record if live is not None else record
            if owner is None or record.owner == owner:
                records.append(record)
        return records

    async def destroy(self, sandbox_id: str, reason: str = "deleted", owner: str | None = None) -> None:
        await self.end(self.get(sandbox_id, owner), reason)

    async def end(self, sandbox: Sandbox, reason: str, dead: bool = False) -> None:
        """End ``sandbox`` with ``reason`` recorded; a resume of its id waits for the end."""
        self._sandboxes.pop(sandbox.id, None)
        ending = self._ending.setdefault(sandbox.id, asyncio.Event())
        try:
            await sandbox.destroy(reason, dead=dead)
        finally:
            ending.set()
            if self._ending.get(sandbox.id) is ending:
                del self._ending[sandbox.id]
            self.registry.ended(sandbox.record)
        await self.collect()

    async def set_network(
        self,
        sandbox_id: str,
        network: NetworkPolicy | dict[str, object] | str | None,
        owner: str | None = None,
    ) -> SandboxRecord:
        """Change a running sandbox's network policy; a bad policy changes nothing."""
        policy = parse_network(network)
        sandbox = self.get(sandbox_id, owner)
        await sandbox.set_network(policy)
        return sandbox.record

    def set_timeout(
        self, sandbox_id: str, timeout_s: float | None, owner: str | None = None
    ) -> SandboxRecord:
        """End the sandbox ``timeout_s`` seconds from now (None: no lifetime limit)."""
        limits.check_duration("timeout", timeout_s)
        sandbox = self.get(sandbox_id, owner)
        now = time.time()
        timeout_s = self.quotas.lifetime(owner, timeout_s, age_s=now - sandbox.record.created_at)
        sandbox.record.expires_at = now + timeout_s if timeout_s is not None else None
        self.store.save(sandbox.record)
        return sandbox.record


def _boot_args(kernel_args: str, image: ImportedImage | None) -> str:
    """The command line a fresh boot records: an imported image's init comes last (and wins)."""
    return f"{kernel_args} init={image.init}" if image is not None else kernel_args
