"""Templates: named snapshots that every key may start sandboxes from; ``base`` among them,
and those imported from OCI images (``ember.images.oci``).

Template ``base`` is a freshly booted guest with its REPL warm: a plain create
resumes it instead of booting when it was made on today's images and kernel
command line and has the shape asked for, which gives the same sandbox as a boot
in a fraction of the time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ember import errors
from ember.engine import limits
from ember.engine.sandbox import SandboxConfig
from ember.engine.store import SnapshotRecord
from ember.images import BuildProgress, ImagesError
from ember.images.errors import ImageRejected
from ember.images.oci import ImportedImage, import_image

if TYPE_CHECKING:
    from ember.engine.manager import SandboxManager

BASE_TEMPLATE = "base"


def current_base(manager: SandboxManager) -> SnapshotRecord | None:
    """Template ``base`` when it was made on today's images and kernel command line."""
    base = manager.store.snapshot_named(BASE_TEMPLATE)
    if base is None:
        return None
    images, driver = manager.images, manager.driver
    current = (str(images.kernel), str(images.rootfs), driver.machine_abi, driver.kernel_args)
    return base if (base.kernel, base.rootfs, base.machine, base.kernel_args) == current else None


async def ensure_base(manager: SandboxManager) -> SnapshotRecord:
    """Build template ``base`` (boot, warm the REPL, snapshot) unless it is current."""
    base = current_base(manager)
    if base is not None:
        return base
    sandbox = await manager.create()
    try:
        return await save(manager, sandbox.id, BASE_TEMPLATE)
    finally:
        await manager.destroy(sandbox.id)


async def save(
    manager: SandboxManager,
    sandbox_id: str,
    name: str,
    owner: str | None = None,
    image: dict[str, Any] | None = None,
) -> SnapshotRecord:
    """Snapshot a sandbox as template ``name`` (for every key), replacing an older one.

    ``image`` describes the OCI image it was imported from, if it was; by default a
    template made from a sandbox of such a template keeps its source's.
    """
    limits.check_template_name(name)
    sandbox = manager.get(sandbox_id, owner)
    if image is None and sandbox.record.snapshot_id is not None:
        source = manager.store.get_snapshot(sandbox.record.snapshot_id)
        image = source.image if source is not None else None
    template = await sandbox.snapshot(manager.snapshots, kind="template")
    older = manager.store.snapshot_named(name)
    if older is not None:
        manager.snapshots.delete(older)  # frees the name; its files go once unused
    template.name, template.owner, template.image = name, None, dict(image or {})
    manager.store.save_snapshot(template)
    await manager.collect()
    return template


async def delete(manager: SandboxManager, name: str) -> None:
    manager.snapshots.delete(manager.snapshots.template(name))
    await manager.collect()


async def import_oci(
    manager: SandboxManager,
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
    """Make template ``name`` from an OCI image: import it, boot it, snapshot it with its
    REPL warm. A failure leaves no template and no sandbox."""
    limits.check_template_name(name)
    progress = progress or BuildProgress()
    config = limits.validate(SandboxConfig(vcpus=vcpus, memory_mib=memory_mb, disk_mib=disk_mb, owner=owner))
    try:
        with manager.imported.importing():
            image = await _import(manager, reference, progress, credentials)
            progress.stage("booting the image")
            sandbox = await manager.launch(config, None, image=image)
    except BaseException:
        await manager.collect()  # an image built for nothing goes at once
        raise
    try:
        progress.stage("snapshotting it, REPL warm")
        described = {"reference": reference, "digest": image.digest, "config": image.config.to_json()}
        return await save(manager, sandbox.id, name, owner, image=described)
    finally:
        await manager.destroy(sandbox.id, "template build finished")


async def _import(
    manager: SandboxManager, reference: str, progress: BuildProgress, credentials: tuple[str, str] | None
) -> ImportedImage:
    try:
        return await asyncio.to_thread(
            import_image, manager.settings, reference, progress, credentials=credentials
        )
    except ImageRejected as exc:
        raise errors.error_for(exc.code.value, str(exc)) from exc
    except ImagesError as exc:  # a build step failed, or no Debian mirror for the agent's Python
        raise errors.TemplateBuildFailedError(f"importing {reference} failed: {exc}") from exc
