"""A daemon of its own on this host, to kill, restart and count: what the crash matrix and the soak run.

A ``Lab`` runs ``ember serve`` in directories of its own (sharing only the built
images), can kill it with SIGKILL (its whole process group, as a crash or the
OOM killer would) and start it again, and knows where to look on the host for
what its daemon made: QEMU processes, run directories, network namespaces,
cgroups, uid claims, snapshot directories and disk layers. ``audit`` lists what
of those belongs to no sandbox or snapshot the daemon knows; ``census`` counts
them, with the daemon's open files and what it holds in memory, from the report
its daemon writes when asked (``memory``: ``ember.server.memory_report``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ember.client import Sandbox
from ember.client._local import is_healthy
from ember.engine.store import Store
from ember.server import memory_report
from ember.settings import Settings
from ember.vmm.cgroups import CgroupHost, CgroupsUnavailable
from ember.vmm.qemu_driver import qemu_processes
from ember.vmm.uids import UidRange

START_TIMEOUT_S = 90.0
NETNS = Path("/run/netns")


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
    #: Set by the crash matrix: the sandbox that ran before a kill answers with its state,
    #: and every finished snapshot restores.
    survivor_ok: bool = True
    snapshots_ok: bool = True

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


class Lab:
    """A daemon of its own (see the module docstring)."""

    def __init__(self, images_dir: Path, env: dict[str, str] | None = None) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="ember-lab-"))
        self.data_dir = self.scratch / "data"
        self.data_dir.mkdir()
        (self.data_dir / "images").symlink_to(images_dir.resolve())
        self.run_dir = Path(tempfile.mkdtemp(prefix="ember-lab-", dir="/dev/shm"))
        self.api_key = "lab-" + secrets.token_hex(12)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.scratch / "daemon.log"
        self.memory_dir = self.scratch / "memory"
        self.memory_dir.mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("EMBER_URL", "EMBER_POOL")},
            **(env or {}),
            "EMBER_DATA_DIR": str(self.data_dir),
            "EMBER_RUN_DIR": str(self.run_dir),
            "EMBER_API_KEY": self.api_key,
            "XDG_CONFIG_HOME": str(self.scratch / "config"),
            memory_report.DIRECTORY_ENV: str(self.memory_dir),
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

    def clear(self) -> None:
        """End every sandbox and delete every snapshot and template but ``base``."""
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

    def memory(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """The daemon's memory report (``ember.server.memory_report``), written now."""
        assert self._process is not None
        report = self.memory_dir / memory_report.REPORT
        report.unlink(missing_ok=True)
        os.kill(self._process.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while not report.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon wrote no memory report; its log:\n{self.log_tail()}")
            time.sleep(0.05)
        return json.loads(report.read_text())

    def census(self, memory: dict[str, Any]) -> dict[str, float]:
        """How many of each thing the daemon made exist now, its open files, and what of its
        ``memory`` report a leak moves: loggers, asyncio tasks, objects of Ember's classes."""
        instance = self.settings.instance
        prefix = f"ember-{instance}-"
        names = [p.name for p in NETNS.iterdir()] if NETNS.is_dir() else []
        try:
            cgroups = len(CgroupHost.detect(instance).leftovers(set()))
        except CgroupsUnavailable:
            cgroups = 0
        assert self._process is not None
        return {
            "QEMU processes": len(qemu_processes(self.run_dir)),
            "run directories": sum(1 for _ in self.run_dir.iterdir()),
            "network namespaces": sum(1 for n in names if n.startswith(prefix)),
            "cgroups": cgroups,
            "uid claims": len(UidRange(*self.settings.uid_range, instance).holders()),
            "disk layers": sum(1 for _ in (self.data_dir / "layers").iterdir()),
            "snapshot directories": sum(1 for p in (self.data_dir / "snapshots").iterdir() if p.is_dir()),
            "daemon open files": len(os.listdir(f"/proc/{self._process.pid}/fd")),
            "daemon loggers": memory["loggers"],
            "daemon asyncio tasks": memory["tasks"],
            "daemon objects of Ember's classes": sum(
                count for name, count in memory["types"].items() if name.startswith("ember.")
            ),
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
