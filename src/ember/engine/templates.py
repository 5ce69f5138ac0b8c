"""Templates: named snapshots that every key may start sandboxes from; ``base`` among them.

Template ``base`` is a freshly booted guest with its REPL warm: a plain create
resumes it instead of booting when it was made on today's images and kernel
command line and has the shape asked for, which gives the same sandbox as a boot
in a fraction of the time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.engine import limits
from ember.engine.store import SnapshotRecord

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
    manager: SandboxManager, sandbox_id: str, name: str, owner: str | None = None
) -> SnapshotRecord:
    """Snapshot a sandbox as template ``name`` (for every key), replacing an older one."""
    limits.check_template_name(name)
    template = await manager.get(sandbox_id, owner).snapshot(manager.snapshots, kind="template")
    older = manager.store.snapshot_named(name)
    if older is not None:
        manager.snapshots.delete(older)  # frees the name; its files go once unused
    template.name, template.owner = name, None
    manager.store.save_snapshot(template)
    await manager.collect()
    return template


async def delete(manager: SandboxManager, name: str) -> None:
    manager.snapshots.delete(manager.snapshots.template(name))
    await manager.collect()
