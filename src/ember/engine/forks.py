"""Fork: ``count`` running copies of a sandbox as it is now, its own run unchanged.

A fork is a one-use snapshot restored ``count`` times at once. The copies are
new sandboxes of the same owner, with the source's metadata (plus
``forked_from``), network policy, idle timeout and the lifetime it has left; all
or none of them are made. Its timing (``ForkTiming``) goes back in the response's
``Server-Timing`` header: the benchmark's bound for a fork is the snapshot, then
the children's CPU spread over the host's cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.engine import limits
from ember.engine.quotas import Usage
from ember.engine.sandbox import Sandbox

if TYPE_CHECKING:
    from ember.engine.manager import SandboxManager

log = logging.getLogger("ember.engine")


@dataclass
class ForkTiming:
    """Where one fork's time went: the snapshot, before any child starts, and the
    daemon's CPU (all its threads, so whatever else it did meanwhile too) in each part."""

    snapshot_s: float = 0.0
    snapshot_cpu_s: float = 0.0
    children_cpu_s: float = 0.0

    def server_timing(self) -> str:
        """As an HTTP ``Server-Timing`` header (durations in ms)."""
        parts = {
            "snapshot": self.snapshot_s,
            "snapshot-cpu": self.snapshot_cpu_s,
            "children-cpu": self.children_cpu_s,
        }
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in parts.items())


async def fork(
    manager: SandboxManager,
    sandbox_id: str,
    count: int,
    owner: str | None = None,
    timing: ForkTiming | None = None,
) -> list[Sandbox]:
    """``count`` new sandboxes identical to this one now; the source runs on unchanged.
    ``timing``, if given, is filled in as it goes."""
    timing = timing or ForkTiming()
    limits.check_fork_count(count)
    source = manager.get(sandbox_id, owner)
    record = source.record
    # All or nothing, before the snapshot; each child's create holds its own share.
    manager.quotas.check(
        owner, Usage(sandboxes=count, vcpus=count * record.vcpus, memory_mb=count * record.memory_mib)
    )
    # Its children start from the snapshot on: the background work the snapshot leaves
    # (the next spare image of the source) waits for them (ember.vmm.memory.Background).
    with manager.driver.starts.starting():
        results = await _snapshot_and_restore(manager, source, count, owner, timing)
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


async def _snapshot_and_restore(
    manager: SandboxManager, source: Sandbox, count: int, owner: str | None, timing: ForkTiming
) -> list[Sandbox | BaseException]:
    """The one-use snapshot, restored ``count`` times at once; each child or why it failed."""
    record = source.record
    started, cpu = time.perf_counter(), time.process_time()
    snapshot = await source.snapshot(manager.snapshots, kind="fork")
    timing.snapshot_s, timing.snapshot_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    cpu = time.process_time()
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
        timing.children_cpu_s = time.process_time() - cpu
    return results
