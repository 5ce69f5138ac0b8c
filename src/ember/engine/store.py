"""The engine's state on disk: one SQLite database (WAL) in the data directory.

A sandbox's record is written when it starts booting, when it runs and when it
ends, so that a daemon that dies can find, on its next start, every sandbox it
left behind and either reattach to it or clean it up and record why. Ended
sandboxes stay listed (with their end reason) until pruned.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes(state);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    owner TEXT,
    name TEXT UNIQUE,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
LIVE_STATES = ("booting", "running", "pooled")
ENDED_KEPT_S = 7 * 24 * 3600


@dataclass
class SandboxRecord:
    """Everything needed to describe a sandbox, and to find its VM again after a restart."""

    id: str
    owner: str | None
    state: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    metadata: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    idle_timeout_s: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    boot_seconds: float | None = None
    hostname: str = ""
    run_dir: str = ""
    data_dir: str = ""
    kernel: str = ""
    rootfs: str = ""
    #: The guest kernel's command line when it booted (``QemuDriver.kernel_args``).
    kernel_args: str = ""
    #: The writable disk: its own top layer first, then the frozen layers below.
    disk_chain: list[str] = field(default_factory=list)
    memory_file: str = ""
    #: True: the VM's RAM is its own memory file. False: a copy-on-write mapping of a snapshot's.
    memory_shared: bool = True
    snapshot_id: str | None = None
    #: The network policy (NetworkPolicy.to_dict()); {} is none.
    network: dict[str, Any] = field(default_factory=dict)
    #: The host network slot while the sandbox has a network.
    net_slot: int | None = None
    #: The guest's address while it has a network.
    address: str | None = None
    #: Exposed guest ports: port (as text) -> its access token.
    ports: dict[str, str] = field(default_factory=dict)
    #: What its lifetime's end does: "kill" ends it, "pause" pauses it (see SandboxManager.pause).
    on_timeout: str = "kill"
    #: The guest's init when it is not Ember's own image's: an imported image's /.ember/init.
    init: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


@dataclass
class SnapshotRecord:
    """A VM frozen in time: memory file, device state, disk layers, and the shape to restore it."""

    id: str
    owner: str | None
    state: str  # "ready", or "deleted" while live sandboxes still map its memory
    kind: str  # "snapshot", "template" or "fork" (taken for one fork, deleted right after)
    directory: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    kernel: str
    rootfs: str
    disk_chain: list[str]
    source_sandbox: str | None = None
    name: str | None = None  # set for templates
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    size_bytes: int = 0
    #: The VMM's machine ABI it was saved under (``QemuDriver.machine_abi``).
    machine: str = ""
    #: The command line its guest kernel booted with ("": from before it was recorded).
    kernel_args: str = ""
    #: For a template imported from an OCI image: its reference, digest and config
    #: (env, workdir, user, entrypoint, cmd); {} otherwise.
    image: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_file(self) -> Path:
        return Path(self.directory) / "memory"

    @property
    def state_file(self) -> Path:
        return Path(self.directory) / "state"

    @property
    def blank_overlay(self) -> Path:
        """An empty overlay on the frozen disk top, copied by every restore."""
        return Path(self.directory) / "overlay.qcow2"


class Store:
    """Thread-safe access to the state database; every call is one short transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (for the other tables that share the file)."""
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def executescript(self, script: str) -> None:
        with self._lock:
            self._db.executescript(script)

    def save(self, record: SandboxRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sandboxes (id, owner, state, record, created_at, ended_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.state,
                    json.dumps(asdict(record)),
                    record.created_at,
                    record.ended_at,
                ),
            )

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        rows = self.execute("SELECT record FROM sandboxes WHERE id = ?", (sandbox_id,))
        return _load(SandboxRecord, rows[0][0]) if rows else None

    def list(self, live_only: bool = True) -> list[SandboxRecord]:
        if live_only:
            marks = ",".join("?" for _ in LIVE_STATES)
            rows = self.execute(
                f"SELECT record FROM sandboxes WHERE state IN ({marks}) ORDER BY created_at", LIVE_STATES
            )
        else:
            rows = self.execute("SELECT record FROM sandboxes ORDER BY created_at")
        return [_load(SandboxRecord, row[0]) for row in rows]

    def save_snapshot(self, record: SnapshotRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots (id, owner, name, state, record, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.name,
                    record.state,
                    json.dumps(asdict(record)),
                    record.created_at,
                ),
            )

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        rows = self.execute("SELECT record FROM snapshots WHERE id = ?", (snapshot_id,))
        return _load(SnapshotRecord, rows[0][0]) if rows else None

    def snapshot_named(self, name: str) -> SnapshotRecord | None:
        rows = self.execute("SELECT record FROM snapshots WHERE name = ? AND state = 'ready'", (name,))
        return _load(SnapshotRecord, rows[0][0]) if rows else None

    def snapshots(self, include_deleted: bool = False) -> list[SnapshotRecord]:
        where = "" if include_deleted else "WHERE state = 'ready'"
        rows = self.execute(f"SELECT record FROM snapshots {where} ORDER BY created_at")
        return [_load(SnapshotRecord, row[0]) for row in rows]

    def forget_snapshot(self, snapshot_id: str) -> None:
        self.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    def prune(self, now: float | None = None) -> int:
        """Forget sandboxes that ended more than a week ago."""
        cutoff = (now or time.time()) - ENDED_KEPT_S
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM sandboxes WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,)
            )
            return cursor.rowcount


R = TypeVar("R", SandboxRecord, SnapshotRecord)


def _load(record_type: type[R], text: str) -> R:
    """A record from its JSON, written by this version or an older one.

    Fields an older version wrote and this one dropped are ignored; fields added
    since take their defaults.
    """
    known = {f.name for f in fields(record_type)}
    return record_type(**{k: v for k, v in json.loads(text).items() if k in known})
