"""SandboxManager: creates, finds, lists, snapshots, forks and ends sandboxes on this host.

The manager picks the VMM driver and acceleration once, checks every request
against the host before a VM exists, and gives each sandbox its own run
directory (sockets, console, memory file; on tmpfs) and its own top disk layer
(``disks``); taking and restoring snapshots is ``snapshots``' business. It keeps
every sandbox's record in the store, ends sandboxes whose lifetime or idle time
is over (the reaper), and on ``start`` finds the sandboxes a previous daemon
left: it reattaches to those still running and cleans up the rest, recording why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ember import errors
from ember.engine import limits
from ember.engine.disks import Layers
from ember.engine.pool import WarmPool
from ember.engine.recovery import recover
from ember.engine.sandbox import Sandbox, SandboxConfig, SandboxState, vm_spec
from ember.engine.snapshots import Snapshots
from ember.engine.store import SandboxRecord, SnapshotRecord, Store
from ember.images import BuildFailed, BuildProgress, GuestImages, ImagesMissing, find_guest_images
from ember.images.errors import ImageRejected
from ember.images.oci import ImportedImage, import_image
from ember.network.networks import Networks
from ember.network.policy import NetworkPolicy
from ember.network.policy import parse as parse_network
from ember.settings import Settings
from ember.vmm import QemuDriver, detect
from ember.vmm.base import Restore

log = logging.getLogger("ember.engine")

REAPER_INTERVAL_S = 1.0
MAX_LIFETIME_S = 30 * 24 * 3600
MAX_FORKS = 16
BASE_TEMPLATE = "base"
#: Snapshot metadata naming the sandbox a pause snapshot will resume as.
PAUSED_KEY = "ember.paused_sandbox"
ON_TIMEOUT = ("kill", "pause")
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class SandboxManager:
    """Owns every sandbox of this engine instance; see the module docstring."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.acceleration = detect(self.settings)
        self.driver = QemuDriver(self.settings, self.acceleration)
        self.store = Store(self.settings.data_dir / "ember.db")
        self.layers = Layers(self.settings)
        self.snapshots = Snapshots(self.settings, self.store, self.layers, self.driver)
        self.networks = Networks(self.settings, self.driver.spawn_helper)
        self.pool = WarmPool(dict(self.settings.pool), self._restore_for_pool)
        self._images: GuestImages | None = None
        self._sandboxes: dict[str, Sandbox] = {}
        #: Sandboxes being torn down, by id: a resume under the same id waits for it,
        #: or the old teardown would delete the new run directory under its QEMU.
        self._ending: dict[str, asyncio.Event] = {}
        self._reaper: asyncio.Task[None] | None = None

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
        self._sandboxes.update(
            await recover(self.settings, self.store, self.driver, self.networks, self.snapshots)
        )
        await self.collect()
        self.store.prune()
        self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")
        self.pool.start()

    async def close(self) -> None:
        """Stop the reaper and the pool and end every sandbox this manager runs."""
        await self.pool.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        await asyncio.gather(*(s.destroy("the daemon shut down") for s in sandboxes), return_exceptions=True)
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
        if on_timeout not in ON_TIMEOUT:
            raise errors.InvalidRequestError(f"on_timeout is one of {', '.join(ON_TIMEOUT)}")
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
            source = self._current_base()
            shape = (vcpus, memory_mb, disk_mb)
            if source is not None and (source.vcpus, source.memory_mib, source.disk_mib) != shape:
                source = None
            template = source.name if source is not None else None
        if source is not None:
            self.snapshots.check_restorable(source)
            vcpus, memory_mb, disk_mb = source.vcpus, source.memory_mib, source.disk_mib
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
        _check_duration("timeout", timeout_s)
        _check_duration("idle_timeout", idle_timeout_s)
        if sandbox_id is None and source is not None and source.kind == "template" and source.name:
            pooled = self.pool.take(source.name)
            if pooled is not None:
                try:
                    await pooled.hand_over(config)
                except errors.EmberError as exc:
                    log.warning("pooled sandbox %s failed at hand-over: %s", pooled.id, exc)
                    await self._end(pooled, "failed at hand-over from the warm pool", dead=True)
                else:
                    log.info(
                        "sandbox %s from the warm pool in %.1f ms", pooled.id, pooled.boot_seconds * 1000
                    )
                    return pooled
        return await self._launch(config, source, sandbox_id=sandbox_id)

    async def _launch(
        self,
        config: SandboxConfig,
        source: SnapshotRecord | None,
        pooled: bool = False,
        sandbox_id: str | None = None,
        image: ImportedImage | None = None,
    ) -> Sandbox:
        """Boot a new VM (of Ember's image, or an imported ``image``), or restore ``source``,
        and wait for its agent."""
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
        try:
            await sandbox.boot()
        finally:
            if sandbox.state is not SandboxState.RUNNING:
                self._sandboxes.pop(sandbox_id, None)
                await self.collect()
        if pooled:
            try:
                await sandbox.park()
            except BaseException:
                await self._end(sandbox, "could not join the warm pool", dead=True)
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
        return await self._launch(limits.validate(config), source, pooled=True)

    def pool_stats(self) -> list[dict[str, object]]:
        return self.pool.stats()

    # ------------------------------------------------------------ snapshots and forks

    async def snapshot(
        self, sandbox_id: str, owner: str | None = None, metadata: dict[str, str] | None = None
    ) -> SnapshotRecord:
        """Snapshot a running sandbox, which runs on; restore it with ``create(snapshot=id)``."""
        limits.check_metadata(metadata or {})
        return await self.get(sandbox_id, owner).snapshot(self.snapshots, metadata=metadata)

    async def fork(self, sandbox_id: str, count: int, owner: str | None = None) -> list[Sandbox]:
        """``count`` new sandboxes identical to this one now; the source runs on unchanged."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
            raise errors.InvalidRequestError(f"a fork makes 1 to {MAX_FORKS} sandboxes")
        source = self.get(sandbox_id, owner)
        record = source.record
        snapshot = await source.snapshot(self.snapshots, kind="fork")
        remaining = record.expires_at - time.time() if record.expires_at is not None else None
        try:
            results = await asyncio.gather(
                *(
                    self.create(
                        snapshot=snapshot.id,
                        owner=owner,
                        metadata={**record.metadata, "forked_from": record.id},
                        timeout_s=max(1.0, remaining) if remaining is not None else None,
                        idle_timeout_s=record.idle_timeout_s,
                        network=source.network,
                    )
                    for _ in range(count)
                ),
                return_exceptions=True,
            )
        finally:
            # Its files stay while the forks map its memory, and go with the last of them.
            self.snapshots.delete(snapshot)
        forks = [r for r in results if isinstance(r, Sandbox)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(self.destroy(f.id, "fork failed") for f in forks), return_exceptions=True)
            await self.collect()
            raise failures[0]
        return forks

    async def pause(self, sandbox_id: str, owner: str | None = None) -> SnapshotRecord:
        """Snapshot the sandbox and end it; ``resume`` brings it back under the same id."""
        sandbox = self.get(sandbox_id, owner)
        metadata = {**sandbox.record.metadata, PAUSED_KEY: sandbox_id}
        snapshot = await sandbox.snapshot(self.snapshots, metadata=metadata)
        await self._end(sandbox, "paused")
        return snapshot

    def paused(self, owner: str | None = None) -> list[SnapshotRecord]:
        """The pause snapshots (each names its sandbox under ``PAUSED_KEY``)."""
        return [s for s in self.snapshots.list(owner) if PAUSED_KEY in s.metadata]

    def paused_snapshot(self, sandbox_id: str, owner: str | None = None) -> SnapshotRecord | None:
        return next((s for s in self.paused(owner) if s.metadata[PAUSED_KEY] == sandbox_id), None)

    async def resume(
        self, sandbox_id: str, owner: str | None = None, timeout_s: float | None = None
    ) -> Sandbox:
        """Restore a paused sandbox under its id, metadata and network policy; its pause snapshot goes."""
        snapshot = self.paused_snapshot(sandbox_id, owner)
        if snapshot is None:
            raise errors.SandboxNotFoundError(f"no paused sandbox {sandbox_id!r}")
        previous = self.store.get(sandbox_id)
        sandbox = await self.create(
            snapshot=snapshot.id,
            sandbox_id=sandbox_id,
            owner=owner,
            metadata={k: v for k, v in snapshot.metadata.items() if k != PAUSED_KEY},
            timeout_s=timeout_s,
            on_timeout=previous.on_timeout if previous is not None else "kill",
            network=previous.network or None if previous is not None else None,
        )
        await self.delete_snapshot(snapshot.id, owner)
        return sandbox

    def _current_base(self) -> SnapshotRecord | None:
        """Template ``base`` when it was made on today's images and kernel command line:
        what a plain create resumes.

        It is a freshly booted guest with its REPL warm, so resuming it gives the
        same sandbox as a boot, in a fraction of the time.
        """
        base = self.store.snapshot_named(BASE_TEMPLATE)
        if base is None:
            return None
        images, driver = self.images, self.driver
        current = (str(images.kernel), str(images.rootfs), driver.machine_abi, driver.kernel_args)
        return base if (base.kernel, base.rootfs, base.machine, base.kernel_args) == current else None

    async def ensure_base_template(self) -> SnapshotRecord:
        """Build template ``base`` (boot, warm the REPL, snapshot) unless it is current."""
        base = self._current_base()
        if base is not None:
            return base
        sandbox = await self.create()
        try:
            return await self.save_template(sandbox.id, BASE_TEMPLATE)
        finally:
            await self.destroy(sandbox.id)

    async def save_template(
        self, sandbox_id: str, name: str, owner: str | None = None, image: dict[str, Any] | None = None
    ) -> SnapshotRecord:
        """Snapshot a sandbox as template ``name`` (for every key), replacing an older one.

        ``image`` describes the OCI image it was imported from, if it was; by default a
        template made from a sandbox of such a template keeps its source's.
        """
        _check_template_name(name)
        sandbox = self.get(sandbox_id, owner)
        if image is None and sandbox.record.snapshot_id is not None:
            source = self.store.get_snapshot(sandbox.record.snapshot_id)
            image = source.image if source is not None else None
        template = await sandbox.snapshot(self.snapshots, kind="template")
        older = self.store.snapshot_named(name)
        if older is not None:
            self.snapshots.delete(older)  # frees the name; its files go once unused
        template.name, template.owner, template.image = name, None, dict(image or {})
        self.store.save_snapshot(template)
        await self.collect()
        return template

    async def import_template(
        self,
        name: str,
        reference: str,
        *,
        vcpus: int = 2,
        memory_mb: int = 512,
        disk_mb: int = 4096,
        credentials: tuple[str, str] | None = None,
        progress: BuildProgress | None = None,
        owner: str | None = None,
    ) -> SnapshotRecord:
        """Make template ``name`` from an OCI image: import it (``ember.images.oci``), boot it,
        snapshot it with its REPL warm. A failure leaves no template and no sandbox."""
        _check_template_name(name)
        progress = progress or BuildProgress()
        config = limits.validate(
            SandboxConfig(vcpus=vcpus, memory_mib=memory_mb, disk_mib=disk_mb, owner=owner)
        )
        try:
            image = await asyncio.to_thread(
                import_image, self.settings, reference, progress, credentials=credentials
            )
        except ImageRejected as exc:
            raise errors.error_for(exc.code.value, str(exc)) from exc
        except BuildFailed as exc:
            raise errors.TemplateBuildFailedError(f"importing {reference} failed: {exc}") from exc
        progress.stage("booting the image")
        sandbox = await self._launch(config, None, image=image)
        try:
            progress.stage("snapshotting it, REPL warm")
            described = {"reference": reference, "digest": image.digest, "config": image.config.to_json()}
            return await self.save_template(sandbox.id, name, owner, image=described)
        finally:
            await self.destroy(sandbox.id, "template build finished")

    def list_snapshots(self, owner: str | None = None) -> list[SnapshotRecord]:
        return self.snapshots.list(owner)

    async def delete_snapshot(self, snapshot_id: str, owner: str | None = None) -> None:
        self.snapshots.delete(self.snapshots.get(snapshot_id, owner))
        await self.collect()

    async def delete_template(self, name: str) -> None:
        self.snapshots.delete(self.snapshots.template(name))
        await self.collect()

    async def collect(self) -> None:
        """Delete the files of retired snapshots and layers that nothing uses any more."""
        async with self.layers.lock:
            self.snapshots.collect(self.store.list(live_only=True))

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
        await self._end(self.get(sandbox_id, owner), reason)

    async def _end(self, sandbox: Sandbox, reason: str, dead: bool = False) -> None:
        self._sandboxes.pop(sandbox.id, None)
        ending = self._ending.setdefault(sandbox.id, asyncio.Event())
        try:
            await sandbox.destroy(reason, dead=dead)
        finally:
            ending.set()
            if self._ending.get(sandbox.id) is ending:
                del self._ending[sandbox.id]
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
        _check_duration("timeout", timeout_s)
        sandbox = self.get(sandbox_id, owner)
        sandbox.record.expires_at = time.time() + timeout_s if timeout_s is not None else None
        self.store.save(sandbox.record)
        return sandbox.record

    # ------------------------------------------------------------ lifetimes

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            try:
                await self.reap()
            except Exception:
                log.exception("reaper pass failed")

    async def reap(self) -> None:
        """End sandboxes past their lifetime or idle time; release dead ones' resources."""
        now, monotonic = time.time(), time.monotonic()
        for sandbox in list(self._sandboxes.values()):
            record = sandbox.record
            reason = None
            if sandbox.state is SandboxState.DEAD:
                reason = record.end_reason or "dead"
            elif record.expires_at is not None and now >= record.expires_at:
                reason = "timeout"
            elif (
                record.idle_timeout_s is not None and monotonic - sandbox.last_active >= record.idle_timeout_s
            ):
                reason = "idle_timeout"
            if reason is not None and sandbox.state is not SandboxState.BOOTING:
                if reason == "timeout" and record.on_timeout == "pause" and await self._pause_at_end(sandbox):
                    continue
                log.info("ending sandbox %s: %s", sandbox.id, reason.splitlines()[0])
                await self._end(sandbox, reason)

    async def _pause_at_end(self, sandbox: Sandbox) -> bool:
        try:
            await self.pause(sandbox.id)
        except errors.EmberError as exc:
            log.warning("sandbox %s could not be paused at its timeout, so it ends: %s", sandbox.id, exc)
            return False
        log.info("paused sandbox %s at its timeout", sandbox.id)
        return True


def _check_template_name(name: str) -> None:
    if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name):
        raise errors.InvalidRequestError(
            "a template name is 1-63 lowercase letters, digits, '.', '_' or '-', starting alphanumeric"
        )


def _boot_args(kernel_args: str, image: ImportedImage | None) -> str:
    """The command line a fresh boot records: an imported image's init comes last (and wins)."""
    return f"{kernel_args} init={image.init}" if image is not None else kernel_args


def _check_duration(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_LIFETIME_S:
        raise errors.InvalidRequestError(f"{name} must be a number of seconds from 1 to {MAX_LIFETIME_S}")
