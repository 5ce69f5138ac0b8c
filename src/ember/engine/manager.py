"""SandboxManager: creates, finds, lists and ends sandboxes on this host.

The manager picks the VMM driver and acceleration once, checks every request
against the host before a VM exists, and gives each sandbox its own run
directory (sockets, console, memory file; on tmpfs) and data directory (its
writable disk). It keeps every sandbox's record in the store, ends sandboxes
whose lifetime or idle time is over (the reaper), and on ``start`` finds the
sandboxes a previous daemon left: it reattaches to those still running and
cleans up the rest, recording why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from pathlib import Path

from ember import errors
from ember.engine import limits
from ember.engine.sandbox import Sandbox, SandboxConfig, SandboxState, vm_spec
from ember.engine.store import SandboxRecord, Store
from ember.images import GuestImages, ImagesMissing, create_writable_disk, find_guest_images
from ember.settings import Settings
from ember.vmm import QemuDriver, detect

log = logging.getLogger("ember.engine")

REAPER_INTERVAL_S = 1.0
MAX_LIFETIME_S = 30 * 24 * 3600


class SandboxManager:
    """Owns every sandbox of this engine instance; see the module docstring."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.acceleration = detect(self.settings)
        self.driver = QemuDriver(self.settings, self.acceleration)
        self.store = Store(self.settings.data_dir / "ember.db")
        self._images: GuestImages | None = None
        self._sandboxes: dict[str, Sandbox] = {}
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
        await self._recover()
        self.store.prune()
        self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")

    async def close(self) -> None:
        """Stop the reaper and end every sandbox this manager runs."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        await asyncio.gather(*(s.destroy("the daemon shut down") for s in sandboxes), return_exceptions=True)
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
    ) -> Sandbox:
        """Boot a new sandbox and return it once its agent answers."""
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
            )
        )
        _check_duration("timeout", timeout_s)
        _check_duration("idle_timeout", idle_timeout_s)
        images = self.images
        sandbox_id = secrets.token_hex(8)
        run_dir = self.settings.run_dir / sandbox_id
        data_dir = self.settings.data_dir / "sandboxes" / sandbox_id
        now = time.time()
        record = SandboxRecord(
            id=sandbox_id,
            owner=owner,
            state=SandboxState.BOOTING.value,
            vcpus=config.vcpus,
            memory_mib=config.memory_mib,
            disk_mib=config.disk_mib,
            metadata=config.metadata,
            created_at=now,
            expires_at=now + timeout_s if timeout_s is not None else None,
            idle_timeout_s=idle_timeout_s,
            hostname=f"ember-{sandbox_id[:12]}",
            run_dir=str(run_dir),
            data_dir=str(data_dir),
            kernel=str(images.kernel),
            rootfs=str(images.rootfs),
            writable_disk=str(data_dir / "disk.ext4"),
        )
        run_dir.mkdir(parents=True)
        data_dir.mkdir(parents=True)
        try:
            await asyncio.to_thread(
                create_writable_disk, self.settings, Path(record.writable_disk), config.disk_mib
            )
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(data_dir, ignore_errors=True)
            raise
        sandbox = Sandbox(record, self.driver.create(vm_spec(record)), self.store, config.env)
        self._sandboxes[sandbox_id] = sandbox
        try:
            await sandbox.boot()
        finally:
            if sandbox.state is not SandboxState.RUNNING:
                self._sandboxes.pop(sandbox_id, None)
        log.info("sandbox %s ready in %.2f s", sandbox_id, sandbox.boot_seconds or 0)
        return sandbox

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
            if (include_ended or s.state in (SandboxState.BOOTING, SandboxState.RUNNING))
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
        sandbox = self.get(sandbox_id, owner)
        self._sandboxes.pop(sandbox_id, None)
        await sandbox.destroy(reason)

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
                log.info("ending sandbox %s: %s", sandbox.id, reason.splitlines()[0])
                self._sandboxes.pop(sandbox.id, None)
                await sandbox.destroy(reason)

    # ------------------------------------------------------------ restart safety

    async def _recover(self) -> None:
        for record in self.store.list(live_only=True):
            sandbox = Sandbox(record, self.driver.create(vm_spec(record)), self.store, {})
            if record.state == SandboxState.BOOTING.value:
                await sandbox.destroy("the daemon restarted while the sandbox was booting", dead=True)
                continue
            try:
                await sandbox.vm.adopt()
            except errors.EmberError:
                await sandbox.destroy("the VM was no longer running when the daemon restarted", dead=True)
                continue
            try:
                await sandbox.adopt()
            except errors.EmberError as exc:
                log.warning("could not reattach sandbox %s: %s", record.id, exc)
                continue
            self._sandboxes[record.id] = sandbox
            log.info("reattached sandbox %s", record.id)


def _check_duration(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_LIFETIME_S:
        raise errors.InvalidRequestError(f"{name} must be a number of seconds from 1 to {MAX_LIFETIME_S}")
