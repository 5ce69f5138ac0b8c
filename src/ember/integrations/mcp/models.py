"""What the tools return as structured content (and so their output schemas), built from SDK objects."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ember.client import CommandResult, Execution, FileInfo, SandboxInfo, SnapshotInfo
from ember.integrations.mcp.content import clip


class Sandbox(BaseModel):
    id: str = Field(description="Pass this to the other tools as sandbox_id.")
    state: str
    vcpus: int
    memory_mb: int
    disk_mb: int | None = None
    template: str | None = None
    snapshot: str | None = Field(None, description="The snapshot or template it was started from.")
    hostname: str | None = None
    expires_at: float | None = Field(None, description="When its lifetime ends (Unix time); None: no limit.")

    @classmethod
    def of(cls, info: SandboxInfo) -> Sandbox:
        return cls(
            id=info.id,
            state=info.state,
            vcpus=info.vcpus,
            memory_mb=info.memory_mb,
            disk_mb=info.disk_mb,
            template=info.template,
            snapshot=info.snapshot,
            hostname=info.hostname,
            expires_at=info.expires_at,
        )


class Sandboxes(BaseModel):
    sandboxes: list[Sandbox]


class Snapshot(BaseModel):
    id: str = Field(description="Pass this to create_sandbox as snapshot to start a copy.")
    kind: str = Field(description="snapshot, or template (then start copies with its name).")
    name: str | None = None
    source_sandbox: str | None = None
    vcpus: int
    memory_mb: int
    disk_mb: int
    size_bytes: int
    created_at: float

    @classmethod
    def of(cls, info: SnapshotInfo) -> Snapshot:
        return cls(
            id=info.id,
            kind=info.kind,
            name=info.name,
            source_sandbox=info.source_sandbox,
            vcpus=info.vcpus,
            memory_mb=info.memory_mb,
            disk_mb=info.disk_mb,
            size_bytes=info.size_bytes,
            created_at=info.created_at,
        )


class Snapshots(BaseModel):
    snapshots: list[Snapshot]


class DisplayedValue(BaseModel):
    formats: list[str] = Field(description="MIME types of the value; images are in the tool's content.")
    text: str | None = None


class CodeError(BaseModel):
    name: str
    value: str


class CodeRun(BaseModel):
    stdout: str
    stderr: str
    results: list[DisplayedValue]
    error: CodeError | None = Field(None, description="The exception the code raised, if any.")
    execution_count: int
    timed_out: bool
    restarted: bool = Field(description="The REPL died and was restarted: earlier state is lost.")
    exit_code: int | None = Field(None, description="Exit status of a bash cell; None for Python.")

    @classmethod
    def of(cls, execution: Execution) -> CodeRun:
        error = execution.error
        return cls(
            stdout=clip(execution.stdout),
            stderr=clip(execution.stderr),
            results=[
                DisplayedValue(formats=sorted(result.data), text=result.text and clip(result.text))
                for result in execution.results
            ],
            error=None if error is None else CodeError(name=error.name, value=error.value),
            execution_count=execution.execution_count,
            timed_out=execution.timed_out,
            restarted=execution.restarted,
            exit_code=execution.exit_code,
        )


class CommandRun(BaseModel):
    exit_code: int | None = Field(description="The command's exit status; None when a signal ended it.")
    stdout: str
    stderr: str
    timed_out: bool

    @classmethod
    def of(cls, result: CommandResult) -> CommandRun:
        return cls(
            exit_code=result.exit_code,
            stdout=clip(result.stdout),
            stderr=clip(result.stderr),
            timed_out=result.timed_out,
        )


class File(BaseModel):
    path: str
    type: str = Field(description="file, dir, symlink or other.")
    size: int
    mode: str = Field(description="Permission bits in octal, e.g. 644.")
    mtime: float
    symlink_target: str | None = None

    @classmethod
    def of(cls, info: FileInfo) -> File:
        return cls(
            path=info.path,
            type=info.type,
            size=info.size,
            mode=f"{info.mode:o}",
            mtime=info.mtime,
            symlink_target=info.symlink_target,
        )


class Listing(BaseModel):
    path: str
    entries: list[File]
