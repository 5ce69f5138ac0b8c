"""A daemon killed with SIGKILL in the middle of an operation leaves nothing behind once restarted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Daemon

from ember.bench.crash import KILL_POINTS, CrashLab
from leaks import qemu_pids_under

#: A handful of the kill points (``ember bench --crash`` runs them all): the ones that
#: leave VMMs the ledger does not call running, and a snapshot cut short.
POINTS = ("fork(4)", "pool refill", "create (cold boot)", "snapshot")


@pytest.fixture(scope="module")
def lab(daemon: Daemon) -> Iterator[CrashLab]:
    crash_lab = CrashLab(Path(os.readlink(daemon.data_dir / "images")))
    try:
        crash_lab.build_base()
        yield crash_lab
    finally:
        run_dir = crash_lab.run_dir
        crash_lab.close()
        assert qemu_pids_under(run_dir) == [], "QEMU processes outlived the crash lab"


@pytest.mark.parametrize("point", [p for p in KILL_POINTS if p.name in POINTS], ids=lambda p: p.name)
def test_a_daemon_killed_mid_operation_restarts_with_nothing_leaked(lab: CrashLab, point) -> None:
    audit = lab.run(point)
    assert audit.leaks == 0, f"left behind after a kill during {point.name}: {audit}\n{lab.log_tail()}"
    assert audit.survivor_ok, f"the sandbox that ran before the kill no longer answers:\n{lab.log_tail()}"
    assert audit.snapshots_ok, f"a finished snapshot no longer restores:\n{lab.log_tail()}"
