"""Kill the daemon with SIGKILL in the middle of an operation, start it again, count what it left.

A ``CrashLab`` runs ``ember serve`` in directories of its own (sharing only the
built images). For each kill point it prepares what the operation needs (a
running sandbox with state in its REPL, a finished snapshot), starts the
operation, kills the daemon while it is in flight, starts it again and audits the
host: every QEMU process, run directory, network namespace, cgroup, uid claim,
snapshot directory and disk layer of the daemon must belong to a sandbox or a
snapshot it knows; the sandbox that ran before the kill must still answer with
its state, and every finished snapshot must still restore. The e2e suite runs a
few kill points; ``ember bench --crash`` runs them all and prints a table.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ember.client import Sandbox, Step, build_template
from ember.client._local import is_healthy
from ember.engine.store import Store
from ember.settings import Settings
from ember.vmm.cgroups import CgroupHost, CgroupsUnavailable
from ember.vmm.qemu_driver import qemu_processes
from ember.vmm.uids import UidRange

START_TIMEOUT_S = 90.0
NETNS = Path("/run/netns")


@dataclass(frozen=True)
class KillPoint:
    """An operation and how long after it starts the daemon is killed."""

    name: str
    #: Given the lab, the prepared sandbox and a finished snapshot's id.
    operation: Callable[[CrashLab, Sandbox, str], object]
    after_s: float
    pool: str = ""  # EMBER_POOL for the daemon killed ("": none)


def _upload(lab: CrashLab, sandbox: Sandbox, _: str) -> None:
    sandbox.files.write("/app/big.bin", os.urandom(64 << 20))


def _build_template(lab: CrashLab, sandbox: Sandbox, _: str) -> None:
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


@dataclass
class Audit:
    """What the restarted daemon left that belongs to nothing it knows (all should be empty)."""

    orphan_qemus: list[int] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    uid_claims: list[int] = field(default_factory=list)
    snapshot_dirs: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    survivor_ok: bool = False
    snapshots_ok: bool = False

    @property
    def leaks(self) -> int:
        return sum(
            len(things)
            for things in (self.orphan_qemus, self.run_dirs, self.namespaces, self.cgroups, self.uid_claims,
                           self.snapshot_dirs, self.layers)
        )  # fmt: skip

    @property
    def clean(self) -> bool:
        return self.leaks == 0 and self.survivor_ok and self.snapshots_ok


class CrashLab:
    """A daemon of its own to kill (see the module docstring)."""

    def __init__(self, images_dir: Path, env: dict[str, str] | None = None) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="ember-crash-"))
        self.data_dir = self.scratch / "data"
        self.data_dir.mkdir()
        (self.data_dir / "images").symlink_to(images_dir.resolve())
        self.run_dir = Path(tempfile.mkdtemp(prefix="ember-crash-", dir="/dev/shm"))
        self.api_key = "crash-" + secrets.token_hex(12)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.scratch / "daemon.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("EMBER_URL", "EMBER_POOL")},
            **(env or {}),
            "EMBER_DATA_DIR": str(self.data_dir),
            "EMBER_RUN_DIR": str(self.run_dir),
            "EMBER_API_KEY": self.api_key,
            "XDG_CONFIG_HOME": str(self.scratch / "config"),
        }
        self.settings = replace(Settings.from_env(), data_dir=self.data_dir, run_dir=self.run_dir)
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ the daemon

    def build_base(self) -> None:
        """Template ``base`` in this lab's data directory, as setup makes it."""
        subprocess.run(
            [sys.executable, "-m", "ember", "image", "build"], env=self.env, check=True, capture_output=True
        )

    def start(self, pool: str = "") -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ember", "serve", "--port", str(self.port)],
                env={**self.env, "EMBER_POOL": pool},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not is_healthy(self.url):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ember serve did not come up; its log:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the daemon (its whole process group: what a crash or an OOM kill does)."""
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def log_tail(self, size_bytes: int = 6000) -> str:
        return self.log_path.read_bytes()[-size_bytes:].decode("utf-8", "replace")

    def sandbox(self, **kwargs: object) -> Sandbox:
        return Sandbox(timeout=600, base_url=self.url, api_key=self.api_key, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------ one kill point

    def run(self, point: KillPoint) -> Audit:
        """Prepare, start the operation, kill the daemon during it, restart it and audit."""
        self.start(point.pool)  # with a pool, the survivor is a pool hit: a refill begins
        survivor = self.sandbox()
        survivor.run_code("survivor = 'still here'")
        snapshot = survivor.snapshot()
        worker = threading.Thread(target=self._quietly, args=(point, survivor, snapshot.id), daemon=True)
        worker.start()
        time.sleep(point.after_s)
        self.kill()
        worker.join(60)
        self.start()
        audit = self.audit()
        audit.survivor_ok = self._survivor_answers(survivor.id)
        snapshots = Sandbox.list_snapshots(base_url=self.url, api_key=self.api_key)
        audit.snapshots_ok = bool(snapshots) and all(self._restores(s.id) for s in snapshots)
        self._clear()
        self.stop()
        return audit

    def _survivor_answers(self, sandbox_id: str) -> bool:
        """The sandbox that ran before the kill runs on, its REPL state intact."""
        try:
            found = Sandbox.connect(sandbox_id, base_url=self.url, api_key=self.api_key)
            return found.run_code("survivor").results[0].text == "'still here'"
        except Exception:  # the audit says no; the daemon's log says why
            return False

    def _restores(self, snapshot_id: str) -> bool:
        try:
            with self.sandbox(snapshot=snapshot_id) as restored:
                return restored.run_code("survivor").results[0].text == "'still here'"
        except Exception:  # the audit says no; the daemon's log says why
            return False

    def _quietly(self, point: KillPoint, sandbox: Sandbox, snapshot_id: str) -> None:
        try:
            point.operation(self, sandbox, snapshot_id)
        except Exception:  # the daemon was killed under it: that is the point
            pass

    def _clear(self) -> None:
        for info in Sandbox.list(base_url=self.url, api_key=self.api_key):
            Sandbox.connect(info.id, base_url=self.url, api_key=self.api_key).kill()
        for snapshot in Sandbox.list_snapshots(base_url=self.url, api_key=self.api_key):
            Sandbox.delete_snapshot(snapshot.id, base_url=self.url, api_key=self.api_key)
        for template in Sandbox.list_templates(base_url=self.url, api_key=self.api_key):
            if template.name != "base":
                Sandbox.delete_template(template.name, base_url=self.url, api_key=self.api_key)

    def audit(self) -> Audit:
        """What on this host belongs to this daemon but to none of its sandboxes and snapshots."""
        live = {info.id for info in Sandbox.list(base_url=self.url, api_key=self.api_key)}
        store = Store(self.data_dir / "ember.db")
        try:
            live |= {r.id for r in store.list(live_only=True)}  # pooled ones too
            snapshots = store.snapshots(include_deleted=True)
            chains = [r.disk_chain for r in store.list(live_only=True)] + [s.disk_chain for s in snapshots]
        finally:
            store.close()
        audit = Audit()
        audit.orphan_qemus = [pid for pid, name in qemu_processes(self.run_dir) if name not in live]
        audit.run_dirs = [p.name for p in self.run_dir.iterdir() if p.name not in live]
        instance = self.settings.instance
        prefix = f"ember-{instance}-"
        names = [p.name for p in NETNS.iterdir()] if NETNS.is_dir() else []
        audit.namespaces = [n for n in names if n.startswith(prefix) and n[len(prefix) :] not in live]
        try:
            leftovers = CgroupHost.detect(instance).leftovers(live)
        except CgroupsUnavailable:
            leftovers = []
        audit.cgroups = [cgroup.directories["memory"].name for cgroup in leftovers]
        holders = UidRange(*self.settings.uid_range, instance).holders()
        audit.uid_claims = [uid for uid, sandbox_id in holders.items() if sandbox_id not in live]
        recorded = {Path(s.directory).name for s in snapshots}
        directory = self.data_dir / "snapshots"
        audit.snapshot_dirs = [p.name for p in directory.iterdir() if p.is_dir() and p.name not in recorded]
        referenced = {Path(layer).name for chain in chains for layer in chain}
        audit.layers = [p.name for p in (self.data_dir / "layers").iterdir() if p.name not in referenced]
        return audit


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
