"""SandboxManager: creates, finds, lists and destroys sandboxes on this host.

The manager picks the VMM driver and acceleration once, checks every request
against the host before a VM exists, and gives each sandbox its own run
directory (sockets, console, memory file; on tmpfs) and data directory (its
writable disk). ``close`` ends every sandbox it made.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil

from ember import errors
from ember.engine import limits
from ember.engine.sandbox import Sandbox, SandboxConfig, SandboxState
from ember.images import GuestImages, ImagesMissing, create_writable_disk, find_guest_images
from ember.settings import Settings
from ember.vmm import QemuDriver, detect

log = logging.getLogger("ember.engine")


class SandboxManager:
    """Owns every sandbox of this engine instance; see the module docstring."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.acceleration = detect(self.settings)
        self.driver = QemuDriver(self.settings, self.acceleration)
        self._images: GuestImages | None = None
        self._sandboxes: dict[str, Sandbox] = {}

    @property
    def images(self) -> GuestImages:
        if self._images is None:
            try:
                self._images = find_guest_images(self.settings)
            except ImagesMissing as exc:
                raise errors.ImagesMissingError(str(exc)) from exc
        return self._images

    async def create(
        self,
        *,
        vcpus: int = 2,
        memory_mb: int = 512,
        disk_mb: int = 4096,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Sandbox:
        """Boot a new sandbox and return it once its agent answers."""
        config = limits.validate(
            SandboxConfig(
                vcpus=vcpus,
                memory_mib=memory_mb,
                disk_mib=disk_mb,
                env=dict(env or {}),
                metadata=dict(metadata or {}),
            )
        )
        images = self.images
        sandbox_id = secrets.token_hex(8)
        run_dir = self.settings.run_dir / sandbox_id
        data_dir = self.settings.data_dir / "sandboxes" / sandbox_id
        run_dir.mkdir(parents=True)
        data_dir.mkdir(parents=True)
        disk = data_dir / "disk.ext4"
        try:
            await asyncio.to_thread(create_writable_disk, self.settings, disk, config.disk_mib)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(data_dir, ignore_errors=True)
            raise
        spec = Sandbox.vm_spec(config, images.kernel, images.rootfs, disk, run_dir)
        sandbox = Sandbox(sandbox_id, config, self.driver.create(spec), data_dir)
        self._sandboxes[sandbox_id] = sandbox
        try:
            await sandbox.boot()
        except BaseException:
            self._sandboxes.pop(sandbox_id, None)
            raise
        log.info("sandbox %s ready in %.2f s", sandbox_id, sandbox.boot_seconds or 0)
        return sandbox

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise errors.SandboxNotFoundError(f"no sandbox {sandbox_id!r}")
        return sandbox

    def list(self, include_ended: bool = False) -> list[Sandbox]:
        return [
            s
            for s in self._sandboxes.values()
            if include_ended or s.state in (SandboxState.BOOTING, SandboxState.RUNNING)
        ]

    async def destroy(self, sandbox_id: str, reason: str = "deleted") -> None:
        sandbox = self.get(sandbox_id)
        await sandbox.destroy(reason)
        del self._sandboxes[sandbox_id]

    async def close(self) -> None:
        """End every sandbox this manager made."""
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        await asyncio.gather(*(s.destroy("engine shut down") for s in sandboxes), return_exceptions=True)
