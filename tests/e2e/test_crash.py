"""A daemon killed with SIGKILL in the middle of an operation leaves nothing behind once restarted,
and a soak of full cycles leaves every count where it began."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Daemon
from qemu.qmp import QMPClient

from ember.bench import crash
from ember.bench.lab import Lab
from ember.bench.soak import soak
from ember.client import Sandbox
from ember.engine.store import Store
from ember.protocol.extents import TRANSFER_DISK_SERIAL
from leaks import qemu_pids_under

#: A handful of the kill points (``ember bench --crash`` runs them all): the ones that
#: leave VMMs the ledger does not call running, and a snapshot cut short.
POINTS = ("fork(4)", "pool refill", "create (cold boot)", "snapshot")


@pytest.fixture(scope="module")
def lab(daemon: Daemon) -> Iterator[Lab]:
    crash_lab = Lab(Path(os.readlink(daemon.data_dir / "images")))
    try:
        crash_lab.build_base()
        yield crash_lab
    finally:
        run_dir = crash_lab.run_dir
        crash_lab.close()
        assert qemu_pids_under(run_dir) == [], "QEMU processes outlived the crash lab"


@pytest.mark.parametrize("point", [p for p in crash.KILL_POINTS if p.name in POINTS], ids=lambda p: p.name)
def test_a_daemon_killed_mid_operation_restarts_with_nothing_leaked(lab: Lab, point) -> None:
    audit = crash.run(lab, point)
    assert audit.leaks == 0, f"left behind after a kill during {point.name}: {audit}\n{lab.log_tail()}"
    assert audit.survivor_ok, f"the sandbox that ran before the kill no longer answers:\n{lab.log_tail()}"
    assert audit.snapshots_ok, f"a finished snapshot no longer restores:\n{lab.log_tail()}"


def test_a_sandbox_left_in_a_snapshots_pause_runs_on_where_it_was(lab: Lab) -> None:
    """What a daemon killed in a snapshot's pause leaves, made on purpose: the VM stopped, and
    the next disk layer recorded though the VM never moved onto it. A restart resumes the VM
    on the layer it writes, and its disk and REPL are as they were."""
    lab.start()
    try:
        sandbox = lab.sandbox()
        sandbox.run_code("kept = 'yes'")
        sandbox.files.write("/app/before.txt", "written before")
        sandbox_id = sandbox.id
        lab.kill()
        store = Store(lab.data_dir / "ember.db")
        record = store.get(sandbox_id)
        assert record is not None
        top = record.disk_chain[0]
        record.disk_chain = [str(Path(top).with_name("recorded-but-never-written.qcow2")), *record.disk_chain]
        store.save(record)
        store.close()
        asyncio.run(_qmp(lab.run_dir / sandbox_id / "qmp.sock", "stop"))
        lab.start()
        again = Sandbox.connect(sandbox_id, base_url=lab.url, api_key=lab.api_key)
        assert again.run_code("print(kept)").stdout == "yes\n"
        assert again.files.read("/app/before.txt") == b"written before"
        again.files.write("/app/after.txt", "written after")
        # Its transfer disk serves the new daemon too: a large file moves on it both ways.
        big = os.urandom(3 << 20)
        before = _transfer_disk_sectors_read(again)
        again.files.write("/app/big.bin", big)
        assert again.files.read("/app/big.bin") == big
        assert _transfer_disk_sectors_read(again) - before >= len(big) // 512
        with lab.sandbox(snapshot=again.snapshot().id) as restored:
            assert restored.files.read("/app/after.txt") == b"written after"
        assert "in a snapshot's pause" in lab.log_tail(20_000)
        audit = lab.audit()
        assert audit.leaks == 0, audit
        lab.clear()
    finally:
        lab.stop()


def _transfer_disk_sectors_read(sandbox: Sandbox) -> int:
    script = (
        f'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = {TRANSFER_DISK_SERIAL} ] && cat $d/stat; done'
    )
    return int(sandbox.commands.run(script).stdout.split()[2])


async def _qmp(socket: Path, command: str) -> None:
    client = QMPClient("test")
    await client.connect(str(socket))
    try:
        await client.execute(command)
    finally:
        await client.disconnect()


def test_a_soak_leaves_every_count_where_it_began(lab: Lab) -> None:
    """A short soak (``ember bench --soak 1000`` is the long one): full cycles, and nothing drifts,
    down to the daemon's loggers, tasks and objects of Ember's classes (a sandbox's objects kept)."""
    lab.start(pool="base=2")
    try:
        result = soak(lab, cycles=16, every=8, progress=lambda _: None)
        audit = lab.audit()
    finally:
        lab.stop()
    drift = result.drift()
    grown = result.grown_types(prefix="ember.")
    assert all(value == 0 for value in drift.values()), f"grew over {result.cycles} cycles: {drift}, {grown}"
    rss = result.rss_growth_mib()
    assert rss < 20, f"the daemon's memory grew {rss:.1f} MiB over {result.cycles} cycles"
    assert audit.leaks == 0, audit
