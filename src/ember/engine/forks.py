"""Fork: ``count`` running copies of a sandbox as it is now, its own run unchanged.

A fork is a one-use snapshot restored ``count`` times at once. The copies are
new sandboxes of the same owner, with the source's metadata (plus
``forked_from``), network policy, idle timeout and the lifetime it has left; all
or none of them are made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ember.engine import limits
from ember.engine.quotas import Usage
from ember.engine.sandbox import Sandbox

if TYPE_CHECKING:
    from ember.engine.manager import SandboxManager

log = logging.getLogger("ember.engine")


async def fork(
    manager: SandboxManager, sandbox_id: str, count: int, owner: str | None = None
) -> list[Sandbox]:
    """``count`` new sandboxes identical to this one now; the source runs on unchanged."""
    limits.check_fork_count(count)
    source = manager.get(sandbox_id, owner)
    record = source.record
    # All or nothing, before the snapshot; each child's create holds its own share.
    manager.quotas.check(
        owner, Usage(sandboxes=count, vcpus=count * record.vcpus, memory_mb=count * record.memory_mib)
    )
    snapshot = await source.snapshot(manager.snapshots, kind="fork")
    remaining = record.expires_at - time.time() if record.expires_at is not None else None
    try:
        results = await asyncio.gather(
            *(
                manager.create(
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
        manager.snapshots.delete(snapshot)
    forks = [r for r in results if isinstance(r, Sandbox)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for failure in failures[1:]:
            log.warning("fork of %s: another child failed too: %s", sandbox_id, failure)
        ended = await asyncio.gather(
            *(manager.destroy(f.id, "fork failed") for f in forks), return_exceptions=True
        )
        for child, result in zip(forks, ended, strict=True):
            if isinstance(result, BaseException):
                log.warning("fork of %s: could not end child %s: %s", sandbox_id, child.id, result)
        await manager.collect()
        raise failures[0]
    return forks
