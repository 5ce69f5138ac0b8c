"""The HTTP API's request and response bodies (pydantic), and their mapping from engine types.

Request models forbid unknown fields and check types strictly, so a typo in a
parameter is a 400 rather than a silently ignored option; text that is not valid
Unicode (JSON can spell an unpaired surrogate, UTF-8 cannot) is a 400 too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from ember.engine.limits import (
    MAX_DISK_MIB,
    MAX_FORKS,
    MAX_LIFETIME_S,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_DISK_MIB,
    MIN_MEMORY_MIB,
    MIN_VCPUS,
    TEMPLATE_NAME,
)
from ember.engine.store import SandboxRecord, SnapshotRecord
from ember.protocol import messages as m
from ember.protocol.codes import ErrorCode
from ember.protocol.wire import is_unicode_text


def unicode_text(value: Any) -> Any:
    """``value`` (JSON) if all its text is valid Unicode, else ValueError: such text could be
    stored, sent to a guest or echoed back nowhere."""
    if isinstance(value, str):
        if not value.isascii() and not is_unicode_text(value):
            raise ValueError("text holds an unpaired surrogate, which is not valid Unicode")
    elif isinstance(value, dict):
        for key, item in value.items():
            unicode_text(key)
            unicode_text(item)
    elif isinstance(value, list):
        for item in value:
            unicode_text(item)
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        return unicode_text(data)


Seconds = float | int
#: A lifetime: more than nothing, at most the longest the daemon keeps a sandbox.
Lifetime = Annotated[Seconds, Field(gt=0, le=MAX_LIFETIME_S)]
#: A timeout for one call into the guest.
CallTimeout = Annotated[Seconds, Field(gt=0)]


class CreateSandbox(_Request):
    vcpus: StrictInt = Field(2, ge=MIN_VCPUS, le=MAX_VCPUS)
    memory_mb: StrictInt = Field(512, ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)
    disk_mb: StrictInt = Field(4096, ge=MIN_DISK_MIB, le=MAX_DISK_MIB)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: Lifetime | None = 300
    idle_timeout: Lifetime | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    #: A template name, or a snapshot id: the sandbox resumes it (with its vcpus, memory and disk).
    template: str | None = None
    snapshot: str | None = None
    #: "none" (default), "full", or {"mode", "domains", "cidrs", "packages"}; checked by the engine.
    network: str | dict[str, Any] | None = None


class NetworkInfo(BaseModel):
    mode: str = "none"
    domains: list[str] = Field(default_factory=list)
    cidrs: list[str] = Field(default_factory=list)
    packages: bool = False
    #: The guest's IPv4 address while it has a network.
    address: str | None = None


class ExposePort(_Request):
    port: StrictInt = Field(ge=1, le=65535)


class PortInfo(BaseModel):
    port: int
    #: Where the port is served: host-based when the daemon has a domain, else path-based.
    url: str
    #: Grants access to this port alone (header X-Ember-Port-Token or query ember_token).
    token: str


class PortList(BaseModel):
    ports: list[PortInfo]


class SetTimeout(_Request):
    timeout: Lifetime | None


class SandboxInfo(BaseModel):
    id: str
    state: str
    vcpus: int
    memory_mb: int
    disk_mb: int
    metadata: dict[str, str]
    template: str | None
    hostname: str
    created_at: float
    expires_at: float | None
    idle_timeout: float | None
    ended_at: float | None
    end_reason: str | None
    boot_seconds: float | None
    #: The snapshot (or template, or fork) it was restored from.
    snapshot: str | None = None
    network: NetworkInfo = Field(default_factory=NetworkInfo)

    @classmethod
    def of(cls, record: SandboxRecord) -> SandboxInfo:
        return cls(
            id=record.id,
            state=record.state,
            vcpus=record.vcpus,
            memory_mb=record.memory_mib,
            disk_mb=record.disk_mib,
            metadata=record.metadata,
            template=record.template,
            hostname=record.hostname,
            created_at=record.created_at,
            expires_at=record.expires_at,
            idle_timeout=record.idle_timeout_s,
            ended_at=record.ended_at,
            end_reason=record.end_reason,
            boot_seconds=record.boot_seconds,
            snapshot=record.snapshot_id,
            network=NetworkInfo(**record.network, address=record.address),
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxInfo]


# ---------------------------------------------------------------- snapshots, forks, templates


class CreateSnapshot(_Request):
    metadata: dict[str, str] = Field(default_factory=dict)


class Fork(_Request):
    count: StrictInt = Field(1, ge=1, le=MAX_FORKS)


class SaveTemplate(_Request):
    name: str = Field(pattern=f"^{TEMPLATE_NAME.pattern}$")


class ImportTemplate(_Request):
    """Build template ``name`` from an OCI image: a registry reference, or a layout
    directory or archive on the daemon's host."""

    name: str = Field(pattern=f"^{TEMPLATE_NAME.pattern}$")
    from_oci: str = Field(min_length=1, max_length=4096)
    vcpus: StrictInt = Field(2, ge=MIN_VCPUS, le=MAX_VCPUS)
    memory_mb: StrictInt = Field(512, ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)
    disk_mb: StrictInt = Field(4096, ge=MIN_DISK_MIB, le=MAX_DISK_MIB)
    registry_username: str | None = None
    registry_password: str | None = None


class ImageInfo(BaseModel):
    """The OCI image a template was imported from, and how its processes run."""

    reference: str
    digest: str
    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: list[str]
    cmd: list[str]

    @classmethod
    def of(cls, image: dict[str, Any]) -> ImageInfo | None:
        if not image:
            return None
        return cls(reference=image["reference"], digest=image["digest"], **image["config"])


class SnapshotInfo(BaseModel):
    id: str
    kind: str
    name: str | None
    source_sandbox: str | None
    vcpus: int
    memory_mb: int
    disk_mb: int
    metadata: dict[str, str]
    created_at: float
    size_bytes: int
    #: Templates imported from an OCI image: the image, its config and default command.
    image: ImageInfo | None = None

    @classmethod
    def of(cls, record: SnapshotRecord) -> SnapshotInfo:
        return cls(
            id=record.id,
            kind=record.kind,
            name=record.name,
            source_sandbox=record.source_sandbox,
            vcpus=record.vcpus,
            memory_mb=record.memory_mib,
            disk_mb=record.disk_mib,
            metadata=record.metadata,
            created_at=record.created_at,
            size_bytes=record.size_bytes,
            image=ImageInfo.of(record.image),
        )


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo]


class PoolInfo(BaseModel):
    template: str
    target: int
    ready: int
    hits: int
    misses: int
    refills: int
    failures: int
    refill_p50_s: float | None
    refill_last_s: float | None


class PoolList(BaseModel):
    pools: list[PoolInfo]


# ---------------------------------------------------------------- code


class RunCode(_Request):
    code: str
    language: Literal["python", "bash"] = "python"
    context_id: str | None = None
    timeout: CallTimeout | None = None
    env: dict[str, str] | None = None


class RichResult(BaseModel):
    data: dict[str, str]
    is_main_result: bool


class ExecutionError(BaseModel):
    name: str
    value: str
    traceback: str


class Execution(BaseModel):
    stdout: str
    stderr: str
    results: list[RichResult]
    error: ExecutionError | None
    execution_count: int
    execution_time: float
    timed_out: bool
    restarted: bool
    exit_code: int | None

    @classmethod
    def of(cls, execution: m.Execution) -> Execution:
        return cls(
            stdout=execution.stdout,
            stderr=execution.stderr,
            results=[RichResult(data=r.data, is_main_result=r.is_main_result) for r in execution.results],
            error=ExecutionError(**execution.error.to_wire()) if execution.error else None,
            execution_count=execution.execution_count,
            execution_time=execution.execution_time_s,
            timed_out=execution.timed_out,
            restarted=execution.restarted,
            exit_code=execution.exit_code,
        )


class CreateContext(_Request):
    language: Literal["python", "bash"] = "python"
    cwd: str | None = None


class Context(BaseModel):
    context_id: str
    language: str
    cwd: str


class ContextList(BaseModel):
    contexts: list[Context]


# ---------------------------------------------------------------- commands


class RunCommand(_Request):
    cmd: str | None = None
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: str | None = None
    timeout: CallTimeout | None = 60
    background: StrictBool = False
    stdin: StrictBool = False
    tag: str | None = None


class CommandResult(BaseModel):
    pid: int
    exit_code: int | None
    signal: int | None
    timed_out: bool
    truncated: bool
    stdout: str
    stderr: str

    @classmethod
    def of(cls, result: m.ProcessExit) -> CommandResult:
        return cls(**result.to_wire())


class Started(BaseModel):
    pid: int


class ProcessInfo(BaseModel):
    pid: int
    argv: list[str]
    cmd: str | None
    cwd: str
    pty: bool
    running: bool
    exit_code: int | None
    tag: str | None
    started_at: float


class ProcessList(BaseModel):
    processes: list[ProcessInfo]


class Signal(_Request):
    signal: str = "SIGKILL"


class CreatePty(_Request):
    cmd: str | None = None
    cols: StrictInt = 80
    rows: StrictInt = 24
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: str | None = None


# ---------------------------------------------------------------- files


class FileInfo(BaseModel):
    path: str
    name: str
    type: str
    size: int
    mode: int
    mtime: float
    owner: str
    group: str
    symlink_target: str | None


class FileList(BaseModel):
    entries: list[FileInfo]


class MakeDirectory(_Request):
    path: str = Field(min_length=1)
    parents: StrictBool = True


class Rename(_Request):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)
    overwrite: StrictBool = True


# ---------------------------------------------------------------- keys and service


class CreateKey(_Request):
    name: str = Field(min_length=1, max_length=100)
    admin: StrictBool = False


class KeyInfo(BaseModel):
    id: str
    name: str
    admin: bool
    created_at: float
    revoked_at: float | None = None


class NewKey(KeyInfo):
    key: str


class KeyList(BaseModel):
    keys: list[KeyInfo]


Limit = Annotated[StrictInt, Field(ge=0)] | None


class QuotaLimits(_Request):
    """Limits of an API key. A field left out follows the default; null is no limit."""

    sandboxes: Limit = None
    vcpus: Limit = None
    memory_mb: Limit = None
    lifetime_s: Annotated[StrictInt, Field(ge=1)] | None = None
    snapshots: Limit = None
    snapshot_bytes: Limit = None

    def given(self) -> dict[str, int | None]:
        """Only the fields the request named (left out: follow the default)."""
        return self.model_dump(exclude_unset=True)


class QuotaUsage(BaseModel):
    sandboxes: int
    vcpus: int
    memory_mb: int
    snapshots: int
    snapshot_bytes: int


class QuotaInfo(BaseModel):
    """A key's quota: the limits it sets itself, the default's, those in force, and its use now."""

    key_id: str
    own: dict[str, int | None]
    default: dict[str, int | None]
    limits: dict[str, int | None]
    usage: QuotaUsage


class Health(BaseModel):
    status: str
    version: str
    acceleration: str
    #: What confines every sandbox's VMM on this host (jail, seccomp, cgroups), or what is missing.
    protections: str = ""


class ErrorBody(BaseModel):
    """Every error response's body: a stable code (clients branch on it) and what to do;
    ``details``, for some codes, facts a program can act on (``quota_exceeded``: which quota,
    its limit, the use)."""

    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None


# ---------------------------------------------------------------- NDJSON stream lines (?stream=true)


class OutputLine(BaseModel):
    type: Literal["stdout", "stderr"]
    text: str


class StartLine(BaseModel):
    type: Literal["start"]
    pid: int


class ErrorLine(BaseModel):
    """The last line of a stream that failed once it had started."""

    type: Literal["error"]
    code: ErrorCode
    message: str


class StageLine(BaseModel):
    """A template build's next stage (``total``: its units of progress, when known)."""

    type: Literal["stage"]
    name: str
    total: int | None


class ProgressLine(BaseModel):
    type: Literal["progress"]
    done: int
    total: int | None


class TemplateLine(BaseModel):
    """The last line of a template build: the template."""

    type: Literal["result"]
    template: SnapshotInfo


class ExecutionLine(BaseModel):
    """The last line of a run_code stream (its stdout and stderr are empty: they were streamed)."""

    type: Literal["result"]
    execution: Execution


class CommandLine(BaseModel):
    """The last line of a command stream (its stdout and stderr are empty: they were streamed)."""

    type: Literal["result"]
    command: CommandResult


def wire(model: m.WireModel) -> dict[str, Any]:
    """An engine/wire dataclass as a plain dict, for response models built from it."""
    return model.to_wire()
