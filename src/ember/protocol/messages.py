"""Every request the host sends to the guest agent, and what comes back.

A request is one MESSAGE frame ``{"op": ..., **fields}`` on a fresh stream id.
The agent answers on the same stream with any number of events and raw frames
(STDOUT/STDERR/DATA), then exactly one terminal message: ``{"type": "result",
"result": {...}}`` or ``{"type": "error", "code": ..., "message": ...}``.
Requests that take a body (file writes, process input) are followed by DATA
frames and an END frame from the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ember.protocol.codes import ErrorCode
from ember.protocol.wire import WireError, WireModel

PROTOCOL_VERSION = 1
DEFAULT_WORKDIR = "/app"


class Request(WireModel):
    op: ClassVar[str]
    #: True when the host follows the request with DATA frames and an END frame.
    has_body: ClassVar[bool] = False
    #: True when its body, or its output, may come as EXTENT frames (``ember.protocol.extents``).
    bulk: ClassVar[bool] = False

    def to_message(self) -> dict[str, Any]:
        return {"op": self.op, **self.to_wire()}


REQUESTS: dict[str, type[Request]] = {}


def _request(cls: type[Request]) -> type[Request]:
    REQUESTS[cls.op] = cls
    return cls


def parse_request(message: dict[str, Any]) -> Request:
    """Decode a request message; raises WireError with a stable code on bad input."""
    op = message.get("op")
    if not isinstance(op, str):
        raise WireError("request without an 'op' string")
    cls = REQUESTS.get(op)
    if cls is None:
        error = WireError(f"unknown operation {op!r}")
        error.code = ErrorCode.UNKNOWN_OPERATION
        raise error
    return cls.from_wire(message)


# ---------------------------------------------------------------- system


@dataclass
class PackageRegistries(WireModel):
    """Where the guest's pip, npm and apt download from: the host's own registries.

    Sent when a sandbox's network has the ``packages`` switch. An empty field
    leaves that tool its own default.
    """

    pip_index_url: str | None = None
    pip_extra_index_urls: list[str] = field(default_factory=list)
    pip_trusted_hosts: list[str] = field(default_factory=list)
    npm_registry: str | None = None
    debian_mirror: str | None = None


@_request
@dataclass
class Configure(Request):
    """Sets the sandbox's identity; sent after boot and after every restore or fork."""

    op: ClassVar[str] = "configure"
    env: dict[str, str] | None = None
    hostname: str | None = None
    time_ns: int | None = None
    entropy_b64: str | None = None
    #: None: unchanged; {}: no network interface; {"address": "a.b.c.d/n", "gateway": "..."}: up.
    network: dict[str, str] | None = None
    #: None: unchanged.
    registries: PackageRegistries | None = None


@dataclass
class AgentInfo(WireModel):
    version: int
    pid: int
    python: str
    hostname: str
    kernel: str


@_request
@dataclass
class Ping(Request):
    op: ClassVar[str] = "ping"


# ---------------------------------------------------------------- REPL


@_request
@dataclass
class RunCode(Request):
    op: ClassVar[str] = "run_code"
    code: str
    language: str = "python"
    context_id: str | None = None
    timeout_s: float | None = None
    env: dict[str, str] | None = None
    # Python only: run in a throwaway namespace that leaves no variables and no
    # execution count behind (the warm pool warms a guest's code path with it).
    scratch: bool = False


@dataclass
class RichResult(WireModel):
    """One displayed value as a MIME bundle; binary types (image/png) are base64."""

    data: dict[str, str]
    is_main_result: bool = False


@dataclass
class ExecutionError(WireModel):
    name: str
    value: str
    traceback: str


@dataclass
class Execution(WireModel):
    """A cell's outcome. The guest streams stdout/stderr; the host fills them in here."""

    stdout: str = ""
    stderr: str = ""
    results: list[RichResult] = field(default_factory=list)
    error: ExecutionError | None = None
    execution_count: int = 0
    execution_time_s: float = 0.0
    timed_out: bool = False
    #: The REPL process died or was killed and a fresh one runs in its place.
    restarted: bool = False
    #: Exit status of the cell in a bash context; None for Python.
    exit_code: int | None = None


@_request
@dataclass
class ContextCreate(Request):
    op: ClassVar[str] = "context_create"
    language: str = "python"
    cwd: str | None = None


@dataclass
class ContextInfo(WireModel):
    context_id: str
    language: str
    cwd: str


@_request
@dataclass
class ContextList(Request):
    op: ClassVar[str] = "context_list"


@dataclass
class ContextListing(WireModel):
    contexts: list[ContextInfo]


@_request
@dataclass
class ContextDelete(Request):
    op: ClassVar[str] = "context_delete"
    context_id: str


@_request
@dataclass
class ContextRestart(Request):
    op: ClassVar[str] = "context_restart"
    context_id: str


# ---------------------------------------------------------------- processes


@dataclass
class PtySize(WireModel):
    cols: int = 80
    rows: int = 24


@_request
@dataclass
class Exec(Request):
    """Start a process: ``cmd`` runs under ``bash -c`` (``sh -c`` in an image without bash),
    ``argv`` runs as given; ``login_shell`` runs the image's shell as a login shell instead
    (``argv`` then says what an older agent runs).

    Foreground: output streams on this request until the exit result. Background:
    the result (``ProcessStarted``) comes at once and the output is kept in
    bounded buffers for ``ProcAttach``.
    """

    op: ClassVar[str] = "exec"
    cmd: str | None = None
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: str | None = None
    timeout_s: float | None = None
    background: bool = False
    stdin: bool = False
    pty: PtySize | None = None
    tag: str | None = None
    max_output_bytes: int | None = None
    login_shell: bool = False


@dataclass
class ProcessStarted(WireModel):
    pid: int


@dataclass
class ProcessExit(WireModel):
    """How a process ended. The guest streams its output; the host fills in stdout/stderr."""

    pid: int
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False
    #: Output beyond the request's limit (or lost from the buffer) was dropped.
    truncated: bool = False
    stdout: str = ""
    stderr: str = ""


@_request
@dataclass
class ProcAttach(Request):
    """Stream a process's output (first what its buffers still hold) until it exits."""

    op: ClassVar[str] = "proc_attach"
    pid: int
    replay: bool = True


@dataclass
class ProcessInfo(WireModel):
    pid: int
    argv: list[str]
    cmd: str | None
    cwd: str
    pty: bool
    running: bool
    exit_code: int | None
    tag: str | None
    started_at: float


@_request
@dataclass
class ProcList(Request):
    op: ClassVar[str] = "proc_list"


@dataclass
class ProcessListing(WireModel):
    processes: list[ProcessInfo]


@_request
@dataclass
class ProcInput(Request):
    """Bytes for a process's stdin (or its terminal) follow as DATA frames."""

    op: ClassVar[str] = "proc_input"
    has_body: ClassVar[bool] = True
    pid: int
    eof: bool = False


@_request
@dataclass
class ProcSignal(Request):
    op: ClassVar[str] = "proc_signal"
    pid: int
    signal: str = "SIGKILL"
    group: bool = True


@_request
@dataclass
class ProcResize(Request):
    op: ClassVar[str] = "proc_resize"
    pid: int
    size: PtySize


# ---------------------------------------------------------------- files


@dataclass
class FileInfo(WireModel):
    path: str
    name: str
    type: str  # "file" | "dir" | "symlink" | "other"
    size: int
    mode: int
    mtime: float
    owner: str
    group: str
    symlink_target: str | None = None


@_request
@dataclass
class FileWrite(Request):
    op: ClassVar[str] = "file_write"
    has_body: ClassVar[bool] = True
    bulk: ClassVar[bool] = True
    path: str
    mode: int | None = None
    append: bool = False
    make_parents: bool = True


@_request
@dataclass
class FileRead(Request):
    """Answers with a ``FileInfo`` event, the bytes as DATA frames (or, with ``extents``, in the
    transfer disk's extents the host lends), then the result. A regular file gives the
    size its ``FileInfo`` says, or ends in ``io_error`` if it shrank under the read."""

    op: ClassVar[str] = "file_read"
    bulk: ClassVar[bool] = True
    path: str
    offset: int = 0
    length: int | None = None
    extents: bool = False


@dataclass
class FileListing(WireModel):
    entries: list[FileInfo]


@_request
@dataclass
class FileList(Request):
    op: ClassVar[str] = "file_list"
    path: str
    depth: int = 1


@_request
@dataclass
class FileStat(Request):
    op: ClassVar[str] = "file_stat"
    path: str


@_request
@dataclass
class FileMkdir(Request):
    op: ClassVar[str] = "file_mkdir"
    path: str
    parents: bool = True
    exist_ok: bool = True


@_request
@dataclass
class FileRemove(Request):
    op: ClassVar[str] = "file_remove"
    path: str
    recursive: bool = False


@_request
@dataclass
class FileRename(Request):
    op: ClassVar[str] = "file_rename"
    source: str
    destination: str
    overwrite: bool = True


@_request
@dataclass
class FileWatch(Request):
    """Streams a ``change`` event (``FileChange``) per change under ``path`` until cancelled.

    A ``watching`` event says the watch is in place; the result comes only if the
    directory itself goes away.
    """

    op: ClassVar[str] = "file_watch"
    path: str
    recursive: bool = False


@dataclass
class FileChange(WireModel):
    #: Relative to the watched directory.
    name: str
    #: "create" | "write" | "remove" | "rename" | "chmod"
    kind: str


# ---------------------------------------------------------------- replies


def result_message(result: WireModel | None) -> dict[str, Any]:
    return {"type": "result", "result": result.to_wire() if result is not None else {}}


def error_message(code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": str(getattr(code, "value", code)), "message": message}


def event_message(event: str, data: WireModel | dict[str, Any] | None = None) -> dict[str, Any]:
    body = data.to_wire() if isinstance(data, WireModel) else (data or {})
    return {"type": "event", "event": event, "data": body}
