"""The warm pool on real microVMs: hits hand over ready sandboxes, misses restore, the pool refills."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ember.engine import SandboxManager, SandboxState
from ember.settings import Settings
from jails import assert_jailed
from leaks import qemu_pids_under, sandbox_networks_of

pytestmark = pytest.mark.integration


async def wait_ready(manager: SandboxManager, template: str, count: int, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = next(s for s in manager.pool_stats() if s["template"] == template)
        if stats["ready"] >= count:
            return stats
        assert time.monotonic() < deadline, f"the pool did not refill: {stats}"
        await asyncio.sleep(0.2)


async def test_pool_hands_out_ready_sandboxes_and_refills(test_settings: Settings) -> None:
    # A manager of its own (it recovers and pools in its own directories).
    data_dir = Path(tempfile.mkdtemp(prefix="ember-pool-"))
    run_dir = Path(tempfile.mkdtemp(prefix="ember-pool-", dir="/dev/shm"))
    (data_dir / "images").symlink_to(test_settings.images_dir.resolve())
    settings = replace(test_settings, data_dir=data_dir, run_dir=run_dir, pool=(("pooled", 1),))
    manager = SandboxManager(settings)
    try:
        source = await manager.create(vcpus=1, memory_mb=256)
        await source.code.run("warm = 'from the template'")
        await manager.save_template(source.id, "pooled")
        await manager.destroy(source.id)
        await manager.start()
        await wait_ready(manager, "pooled", 1)
        assert manager.list() == [], "pooled sandboxes must not be listed"

        # Two at once with one ready: one hit, and one miss that restores on the spot.
        hit, miss = await asyncio.gather(
            manager.create(
                template="pooled", env={"WHO": "first"}, metadata={"n": "1"}, timeout_s=600, network="full"
            ),
            manager.create(template="pooled", network={"cidrs": ["192.0.2.0/24"]}),
        )
        assert hit.state is SandboxState.RUNNING and miss.state is SandboxState.RUNNING
        assert_jailed(hit)  # parked in the pool, then handed over, as jailed as any restore
        assert_jailed(miss)
        assert hit.record.metadata == {"n": "1"} and hit.record.expires_at is not None
        hit_ms, miss_s = hit.boot_seconds * 1000, miss.boot_seconds
        print(f"\npool hit handed over in {hit_ms:.1f} ms; miss restored in {miss_s:.2f} s")
        result = await hit.code.run("import os; print(warm, os.environ.get('WHO'))")
        assert result.stdout == "from the template first\n"
        assert (await miss.code.run("print(warm)")).stdout == "from the template\n"
        # The pool refills in the background.
        stats = await wait_ready(manager, "pooled", 1)
        assert stats["hits"] == 1 and stats["misses"] == 1 and stats["refills"] >= 2
        assert stats["refill_p50_s"] is not None
        assert {hit.id, miss.id} == {s.id for s in manager.list()}
        assert hit.hostname != miss.hostname
        # Each got its own network address, configured in its guest.
        assert hit.record.address and miss.record.address and hit.record.address != miss.record.address
        for sandbox in (hit, miss):
            shown = await sandbox.commands.run("ip -4 -o address show scope global")
            assert f"inet {sandbox.record.address}/30" in shown.stdout, shown.stdout

        # A plain hit (no env, no network) asks nothing of the guest at hand-over: it
        # still has its own name, a right clock and its own random numbers.
        await wait_ready(manager, "pooled", 1)
        plain = await manager.create(template="pooled")
        print(f"plain pool hit handed over in {plain.boot_seconds * 1000:.2f} ms")
        host_before = time.time()
        shown = await plain.code.run("import random, socket, time; print(socket.gethostname(), time.time())")
        name, guest_time = shown.stdout.split()
        assert name == plain.hostname and name not in (hit.hostname, miss.hostname)
        assert host_before - 1 < float(guest_time) < time.time() + 1
        draws = [(await s.code.run("import random; print(random.random())")).stdout for s in (plain, hit)]
        assert draws[0] != draws[1]
    finally:
        await manager.close()
        networks = sandbox_networks_of(data_dir)
        assert not networks, f"sandbox networks outlived the pool's manager: {networks}"
        leaked = qemu_pids_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert not leaked, f"QEMU processes outlived the pool's manager: {leaked}"
