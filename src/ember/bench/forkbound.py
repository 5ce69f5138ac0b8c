"""A fork's floor on a host with few cores: its snapshot, then its children's CPU on every core.

Under TCG a fork's child costs CPU (its QEMU starting, loading and translating
what its guest runs first), so ``n`` children on a host of ``cores`` take at
least ``T + n·C / cores``: ``T`` the snapshot (no child starts before it ends),
``C`` one child's CPU. ``T`` comes from the daemon (the fork's ``Server-Timing``
header), ``C`` from the children's QEMU processes (``/proc/PID/stat``) and the
daemon's CPU for them; what the host's other processes used meanwhile is the
CPU the fork could not have.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import httpx

from ember.bench import host


@dataclass(frozen=True)
class ForkRun:
    """One fork(count) as measured."""

    count: int
    wall_s: float
    snapshot_s: float  # T
    #: C: the children's QEMUs' CPU and the daemon's for them, per child (None: not on this host)
    child_cpu_s: float | None
    others_cores: float  # CPU the host's other processes used meanwhile, in cores

    @staticmethod
    def bound_s(runs: list[ForkRun], single: list[ForkRun], cores: float) -> float:
        """``T + count·C / cores``: T of ``runs`` (fork(count)), C of ``single`` (fork(1))."""
        snapshot = statistics.median(r.snapshot_s for r in runs)
        child = statistics.median(r.child_cpu_s or 0.0 for r in single)
        return snapshot + runs[0].count * child / cores


def fork_once(
    http: httpx.Client, api_key: str | None, source_id: str, count: int
) -> tuple[ForkRun, list[str]]:
    """Fork ``source_id`` ``count`` times over HTTP; the measurement and the children's ids."""
    source_before, used = host.qemu_cpu_s(source_id) or 0.0, host.cpu_used_s()
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = http.post(f"/v1/sandboxes/{source_id}/fork", json={"count": count}, headers=headers)
    wall = time.perf_counter() - started
    used = host.cpu_used_s() - used
    response.raise_for_status()
    ids = [sandbox["id"] for sandbox in response.json()["sandboxes"]]
    timing = server_timing(response.headers.get("server-timing", ""))
    children = [host.qemu_cpu_s(sandbox_id) for sandbox_id in ids]
    source = (host.qemu_cpu_s(source_id) or 0.0) - source_before
    children_s = sum(cpu or 0.0 for cpu in children) + timing.get("children-cpu", 0.0)
    ours = children_s + source + timing.get("snapshot-cpu", 0.0)
    run = ForkRun(
        count=count,
        wall_s=wall,
        snapshot_s=timing.get("snapshot", 0.0),
        child_cpu_s=children_s / count if None not in children else None,
        others_cores=max(0.0, used - ours) / wall,
    )
    return run, ids


def server_timing(header: str) -> dict[str, float]:
    """``Server-Timing: a;dur=1.5, b;dur=2`` -> ``{"a": 0.0015, "b": 0.002}`` (seconds)."""
    timings = {}
    for metric in header.split(","):
        name, *parameters = (part.strip() for part in metric.split(";"))
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key == "dur" and name:
                try:
                    timings[name] = float(value) / 1000
                except ValueError:
                    pass
    return timings
