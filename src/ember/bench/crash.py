"""Kill the daemon with SIGKILL in the middle of an operation, start it again, count what it left.

On a daemon of its own (``ember.bench.lab``), for each kill point it prepares what
the operation needs (a running sandbox with state in its REPL, a finished
snapshot), starts the operation, kills the daemon while it is in flight, starts
it again and audits the host: every QEMU process, run directory, network
namespace, cgroup, uid claim, snapshot directory and disk layer of the daemon
must belong to a sandbox or a snapshot it knows; the sandbox that ran before the
kill must still answer with its state, and every finished snapshot must still
restore. The e2e suite runs a
few kill points; ``ember bench --crash`` runs them all and prints a table.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ember.bench.lab import Audit, Lab
from ember.client import Sandbox, Step, build_template


@dataclass(frozen=True)
class KillPoint:
    """An operation and how long after it starts the daemon is killed."""

    name: str
    #: Given the lab, the prepared sandbox and a finished snapshot's id.
    operation: Callable[[Lab, Sandbox, str], object]
    after_s: float
    pool: str = ""  # EMBER_POOL for the daemon killed ("": none)


def _upload(lab: Lab, sandbox: Sandbox, _: str) -> None:
    sandbox.files.write("/app/big.bin", os.urandom(64 << 20))


def _build_template(lab: Lab, sandbox: Sandbox, _: str) -> None:
    steps = [Step(run="sleep 3; echo built > /app/built")]
    build_template("crashlab", steps, base="base", base_url=lab.url, api_key=lab.api_key)


KILL_POINTS = (
    KillPoint("create (cold boot)", lambda lab, sb, _: lab.sandbox(memory_mb=448), 1.5),
    KillPoint("restore", lambda lab, sb, snapshot: lab.sandbox(snapshot=snapshot), 0.1),
    KillPoint("pool refill", lambda lab, sb, _: time.sleep(5), 0.2, pool="base=2"),
    KillPoint("fork(4)", lambda lab, sb, _: sb.fork(4), 0.3),
    KillPoint("snapshot", lambda lab, sb, _: sb.snapshot(), 0.05),
    KillPoint("template build", _build_template, 2.0),
    KillPoint("file upload", _upload, 0.5),
    KillPoint("network attach", lambda lab, sb, _: sb.network.update("full"), 0.05),
)


def run(lab: Lab, point: KillPoint) -> Audit:
    """Prepare, start the operation, kill the daemon during it, restart it and audit."""
    lab.start(point.pool)  # with a pool, the survivor is a pool hit: a refill begins
    survivor = lab.sandbox()
    survivor.run_code("survivor = 'still here'")
    snapshot = survivor.snapshot()
    worker = threading.Thread(target=_quietly, args=(lab, point, survivor, snapshot.id), daemon=True)
    worker.start()
    time.sleep(point.after_s)
    lab.kill()
    worker.join(60)
    lab.start()
    audit = lab.audit()
    audit.survivor_ok = _survivor_answers(lab, survivor.id)
    snapshots = Sandbox.list_snapshots(base_url=lab.url, api_key=lab.api_key)
    audit.snapshots_ok = bool(snapshots) and all(_restores(lab, s.id) for s in snapshots)
    lab.clear()
    lab.stop()
    return audit


def _survivor_answers(lab: Lab, sandbox_id: str) -> bool:
    """The sandbox that ran before the kill runs on, its REPL state intact."""
    try:
        found = Sandbox.connect(sandbox_id, base_url=lab.url, api_key=lab.api_key)
        return found.run_code("survivor").results[0].text == "'still here'"
    except Exception:  # the audit says no; the daemon's log says why
        return False


def _restores(lab: Lab, snapshot_id: str) -> bool:
    try:
        with lab.sandbox(snapshot=snapshot_id) as restored:
            return restored.run_code("survivor").results[0].text == "'still here'"
    except Exception:  # the audit says no; the daemon's log says why
        return False


def _quietly(lab: Lab, point: KillPoint, sandbox: Sandbox, snapshot_id: str) -> None:
    try:
        point.operation(lab, sandbox, snapshot_id)
    except Exception:  # the daemon was killed under it: that is the point
        pass
