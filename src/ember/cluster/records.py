"""What the cluster keeps in etcd: the key layout and one small record type per kind of key.

::

    /ember/hosts/<name>         HostRecord, under the host's lease (gone when the host is)
    /ember/sandboxes/<id>       SandboxEntry: the host a sandbox runs on, and its state
    /ember/snapshots/<id>       SnapshotEntry: the hosts holding a copy of a snapshot
    /ember/templates/<name>     TemplateEntry: the snapshot a template name stands for now
    /ember/keys/<sha256>        an API key's row (hashed; see ``ember.cluster.keystore``)
    /ember/quota-default        the quota of keys that set none of their own
    /ember/secret               the token hosts show each other (snapshot copies)

Records are JSON; unknown fields from a newer Ember are ignored, missing ones defaulted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

ROOT = "/ember/"
HOSTS = ROOT + "hosts/"
SANDBOXES = ROOT + "sandboxes/"
SNAPSHOTS = ROOT + "snapshots/"
TEMPLATES = ROOT + "templates/"
KEYS = ROOT + "keys/"
QUOTA_DEFAULT = ROOT + "quota-default"
SECRET = ROOT + "secret"


class _Record:
    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        raw = json.loads(data)
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class HostRecord(_Record):
    """A member of the cluster as it last reported itself (every few seconds)."""

    name: str
    #: Where other hosts and gateways reach its API (``http(s)://address:port``).
    address: str
    #: "host" runs sandboxes; "gateway" only answers the API and proxies.
    role: str = "host"
    lease: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    version: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    #: Memory a new sandbox can still get here (what the engine's own check allows).
    free_memory_mib: int = 0
    free_disk_mib: int = 0
    load1: float = 0.0
    sandboxes: int = 0
    #: Ready sandboxes in its warm pool, by template.
    pool: dict[str, int] = field(default_factory=dict)
    #: The templates it can restore now: name -> snapshot id.
    templates: dict[str, str] = field(default_factory=dict)


@dataclass
class SandboxEntry(_Record):
    """A sandbox's line in the catalog: which host runs it, written by that host."""

    id: str
    host: str
    owner: str | None
    #: "running", "ended" (its host has its record) or "lost" (its host left the cluster).
    state: str = "running"
    vcpus: int = 0
    memory_mib: int = 0
    created_at: float = 0.0
    ended_at: float | None = None
    end_reason: str | None = None
    #: The sandbox as the API showed it when it started, to answer for it once its host is gone.
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SnapshotEntry(_Record):
    """A snapshot (or template) and the hosts that hold a copy of its files."""

    id: str
    owner: str | None
    kind: str
    holders: list[str]
    #: The host it was taken on.
    origin: str = ""
    name: str | None = None
    vcpus: int = 0
    memory_mib: int = 0
    created_at: float = 0.0
    size_bytes: int = 0
    #: Set when someone deleted it: each holder deletes its copy and leaves the list.
    deleted: bool = False


@dataclass
class TemplateEntry(_Record):
    """The snapshot a template name stands for: the newest one built on any host."""

    name: str
    snapshot_id: str
    origin: str
    created_at: float
