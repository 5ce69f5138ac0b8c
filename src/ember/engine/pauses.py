"""Pause and resume: a sandbox snapshotted and ended, then restored under the same id.

A pause snapshot names its sandbox in its metadata (``PAUSED_KEY``); resuming it
restores the sandbox's id, metadata, network policy and ``on_timeout``, and the
pause snapshot goes. E2B's ``pause`` / ``connect`` and ``on_timeout="pause"`` are
built on this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.engine.store import SnapshotRecord

if TYPE_CHECKING:
    from ember.engine.manager import SandboxManager

#: Snapshot metadata naming the sandbox a pause snapshot will resume as.
PAUSED_KEY = "ember.paused_sandbox"


async def pause(manager: SandboxManager, sandbox_id: str, owner: str | None = None) -> SnapshotRecord:
    """Snapshot the sandbox and end it; ``resume`` brings it back under the same id."""
    sandbox = manager.get(sandbox_id, owner)
    manager.check_snapshot_quota(owner)
    metadata = {**sandbox.record.metadata, PAUSED_KEY: sandbox_id}
    snapshot = await sandbox.snapshot(manager.snapshots, metadata=metadata)
    await manager.end(sandbox, "paused")
    return snapshot


def paused(manager: SandboxManager, owner: str | None = None) -> list[SnapshotRecord]:
    """The pause snapshots (each names its sandbox under ``PAUSED_KEY``)."""
    return [s for s in manager.snapshots.list(owner) if PAUSED_KEY in s.metadata]


def paused_snapshot(
    manager: SandboxManager, sandbox_id: str, owner: str | None = None
) -> SnapshotRecord | None:
    return next((s for s in paused(manager, owner) if s.metadata[PAUSED_KEY] == sandbox_id), None)


async def resume(
    manager: SandboxManager, sandbox_id: str, owner: str | None = None, timeout_s: float | None = None
) -> Sandbox:
    """Restore a paused sandbox under its id, metadata and network policy; its pause snapshot goes."""
    snapshot = paused_snapshot(manager, sandbox_id, owner)
    if snapshot is None:
        raise errors.SandboxNotFoundError(f"no paused sandbox {sandbox_id!r}")
    previous = manager.store.get(sandbox_id)
    sandbox = await manager.create(
        snapshot=snapshot.id,
        sandbox_id=sandbox_id,
        owner=owner,
        metadata={k: v for k, v in snapshot.metadata.items() if k != PAUSED_KEY},
        timeout_s=timeout_s,
        on_timeout=previous.on_timeout if previous is not None else "kill",
        network=previous.network or None if previous is not None else None,
    )
    await manager.delete_snapshot(snapshot.id, owner)
    return sandbox
