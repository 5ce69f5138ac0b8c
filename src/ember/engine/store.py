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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
"""
LIVE_STATES = ("booting", "running")
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
    writable_disk: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


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
        return SandboxRecord(**json.loads(rows[0][0])) if rows else None

    def list(self, live_only: bool = True) -> list[SandboxRecord]:
        if live_only:
            marks = ",".join("?" for _ in LIVE_STATES)
            rows = self.execute(
                f"SELECT record FROM sandboxes WHERE state IN ({marks}) ORDER BY created_at", LIVE_STATES
            )
        else:
            rows = self.execute("SELECT record FROM sandboxes ORDER BY created_at")
        return [SandboxRecord(**json.loads(row[0])) for row in rows]

    def prune(self, now: float | None = None) -> int:
        """Forget sandboxes that ended more than a week ago."""
        cutoff = (now or time.time()) - ENDED_KEPT_S
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM sandboxes WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,)
            )
            return cursor.rowcount
