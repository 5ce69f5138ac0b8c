"""What the SDK hands back: results and descriptions parsed from the daemon's JSON.

Each is a ``WireModel`` dataclass, so a response is checked field by field on the
way in; an answer of the wrong shape raises ``ProtocolError`` instead of surfacing
later as an ``AttributeError``. Types the API shares with the guest protocol
(``FileInfo``, ``ProcessInfo``, ``ContextInfo``, ``ExecutionError``) are reused as they are.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ember.errors import ProtocolError
from ember.protocol.messages import ExecutionError, ProcessExit
from ember.protocol.wire import WireError, WireModel

M = TypeVar("M", bound=WireModel)


def parse(model: type[M], data: Any) -> M:
    """Decode one API object; a daemon that answers with another shape is a protocol error."""
    try:
        return model.from_wire(data)
    except WireError as exc:
        raise ProtocolError(f"the daemon answered with an unexpected {model.__name__}: {exc}") from exc


def parse_list(model: type[M], data: Any, key: str) -> list[M]:
    """Decode the list a listing answer carries under `key` (``{"sandboxes": [...]}``)."""
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"the daemon's answer has no {key!r} list")
    return [parse(model, item) for item in items]


@dataclass
class Result(WireModel):
    """One displayed value (a cell's last expression, a ``display()`` call) in several formats."""

    data: dict[str, str]
    is_main_result: bool = False

    @property
    def text(self) -> str | None:
        return self.data.get("text/plain")

    @property
    def html(self) -> str | None:
        return self.data.get("text/html")

    @property
    def markdown(self) -> str | None:
        return self.data.get("text/markdown")

    @property
    def svg(self) -> str | None:
        return self.data.get("image/svg+xml")

    @property
    def latex(self) -> str | None:
        return self.data.get("text/latex")

    @property
    def png(self) -> bytes | None:
        """The image bytes (the wire carries them base64-encoded)."""
        return _b64(self.data.get("image/png"))

    @property
    def jpeg(self) -> bytes | None:
        return _b64(self.data.get("image/jpeg"))

    @property
    def json(self) -> Any:
        """The ``application/json`` value, decoded; None when the result has none."""
        raw = self.data.get("application/json")
        return None if raw is None else json.loads(raw)

    def __str__(self) -> str:
        return self.text or ""


def _b64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


@dataclass
class Execution(WireModel, Mapping[str, Any]):
    """A cell's outcome, read as attributes (``r.stdout``) or as the API's JSON (``r["stdout"]``).

    The mapping view serves code written for InstaVM-style ``execute()`` dicts: its keys
    and values are exactly the JSON the daemon returned, so ``dict(r)`` is serialisable.
    """

    stdout: str = ""
    stderr: str = ""
    results: list[Result] = field(default_factory=list)
    error: ExecutionError | None = None
    execution_count: int = 0
    #: Seconds the cell ran.
    execution_time: float = 0.0
    timed_out: bool = False
    #: The REPL process died or was killed and a fresh one runs in its place (state is lost).
    restarted: bool = False
    #: Exit status of a bash cell; None for Python.
    exit_code: int | None = None

    @property
    def text(self) -> str | None:
        """The main result's ``text/plain``, if the cell ended with a value."""
        main = next((result for result in self.results if result.is_main_result), None)
        return main.text if main is not None else None

    def __getitem__(self, key: str) -> Any:
        return self.to_wire()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_wire())

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


class CommandResult(ProcessExit):
    """How a command ended: ``exit_code`` (None when a signal ended it), output, ``timed_out``.

    A non-zero exit status is a result, not an exception: check ``exit_code``.
    """


@dataclass
class SandboxInfo(WireModel):
    """A sandbox as the daemon describes it; ended sandboxes keep their ``end_reason``."""

    id: str
    state: str
    vcpus: int
    memory_mb: int
    disk_mb: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    hostname: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    idle_timeout: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    boot_seconds: float | None = None
    #: The snapshot, template or fork snapshot it was restored from.
    snapshot: str | None = None
    #: Its network policy (mode, domains, cidrs, packages) and, while it has one, its ``address``.
    network: dict[str, Any] = field(default_factory=dict)


@dataclass
class PortInfo(WireModel):
    """An exposed port: its ``url``, reachable with the API key or ``token``
    (header ``X-Ember-Port-Token`` or query ``ember_token``)."""

    port: int
    url: str
    token: str


@dataclass
class ImageInfo(WireModel):
    """The OCI image a template was imported from: its config, as its sandboxes run it."""

    reference: str
    digest: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @property
    def default_command(self) -> list[str]:
        """The image's command (entrypoint, then cmd), as ``docker run`` would start it."""
        return self.entrypoint + self.cmd


@dataclass
class SnapshotInfo(WireModel):
    """A snapshot (``kind="snapshot"``) or a template (``kind="template"``, with its ``name``)."""

    id: str
    kind: str
    vcpus: int
    memory_mb: int
    disk_mb: int
    name: str | None = None
    source_sandbox: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    size_bytes: int = 0
    #: For a template imported from an OCI image (``build_template(..., from_oci=...)``).
    image: ImageInfo | None = None


@dataclass
class PoolInfo(WireModel):
    """The warm pool of one template: how many are kept and ready, hits, misses, refill times."""

    template: str
    target: int
    ready: int
    hits: int = 0
    misses: int = 0
    refills: int = 0
    failures: int = 0
    refill_p50_s: float | None = None
    refill_last_s: float | None = None


@dataclass
class KeyInfo(WireModel):
    """An API key as listed; the secret itself is shown only once, by ``create``."""

    id: str
    name: str
    admin: bool = False
    created_at: float = 0.0
    revoked_at: float | None = None


@dataclass
class QuotaUsage(WireModel):
    """What a key holds now: running sandboxes and their vCPUs and memory, kept snapshots."""

    sandboxes: int = 0
    vcpus: int = 0
    memory_mb: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0


@dataclass
class QuotaInfo(WireModel):
    """A key's quota: ``limits`` in force (None: no limit), from its ``own`` and the ``default``."""

    key_id: str
    limits: dict[str, int | None]
    usage: QuotaUsage
    own: dict[str, int | None] = field(default_factory=dict)
    default: dict[str, int | None] = field(default_factory=dict)


@dataclass
class CreatedKey(WireModel):
    """A new API key, secret included (the daemon keeps only its hash)."""

    id: str
    name: str
    key: str
    admin: bool = False
    created_at: float = 0.0
