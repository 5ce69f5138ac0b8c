"""What the tools return as structured content (and so their output schemas).

Each model reads the SDK object of the same shape by attribute
(``Sandbox.model_validate(info)``; a cell's outcome from its wire form), keeping
only what a model needs; output text is clipped on the way in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ember.integrations.mcp.content import clip


class _FromSdk(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _Output(_FromSdk):
    stdout: str
    stderr: str

    @field_validator("stdout", "stderr")
    @classmethod
    def _clip(cls, text: str) -> str:
        return clip(text)


class Sandbox(_FromSdk):
    id: str = Field(description="Pass this to the other tools as sandbox_id.")
    state: str
    vcpus: int
    memory_mb: int
    disk_mb: int | None = None
    template: str | None = None
    snapshot: str | None = Field(None, description="The snapshot or template it was started from.")
    hostname: str | None = None
    expires_at: float | None = Field(None, description="When its lifetime ends (Unix time); None: no limit.")
    network: dict[str, Any] = Field(
        default_factory=dict, description="Its network policy (mode, domains, cidrs) and address."
    )


class ExposedPort(_FromSdk):
    port: int
    url: str = Field(description="Where the server answers, HTTP and WebSocket.")
    token: str = Field(description="Send as header X-Ember-Port-Token, or as ?ember_token=.")


class Sandboxes(BaseModel):
    sandboxes: list[Sandbox]


class Snapshot(_FromSdk):
    id: str = Field(description="Pass this to create_sandbox as snapshot to start a copy.")
    kind: str = Field(description="snapshot, or template (then start copies with its name).")
    name: str | None = None
    source_sandbox: str | None = None
    vcpus: int
    memory_mb: int
    disk_mb: int
    size_bytes: int
    created_at: float


class Snapshots(BaseModel):
    snapshots: list[Snapshot]


class DisplayedValue(BaseModel):
    formats: list[str] = Field(description="MIME types of the value; images are in the tool's content.")
    text: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _of_wire_result(cls, value: Any) -> Any:
        """A result as the API sends it: ``{"data": {mime: value}, "is_main_result": ...}``."""
        if isinstance(value, dict) and "data" in value:
            data = value["data"]
            text = data.get("text/plain")
            return {"formats": sorted(data), "text": None if text is None else clip(text)}
        return value


class CodeError(_FromSdk):
    name: str
    value: str


class CodeRun(_Output):
    results: list[DisplayedValue]
    error: CodeError | None = Field(None, description="The exception the code raised, if any.")
    execution_count: int
    timed_out: bool
    restarted: bool = Field(description="The REPL died and was restarted: earlier state is lost.")
    exit_code: int | None = Field(None, description="Exit status of a bash cell; None for Python.")


class CommandRun(_Output):
    exit_code: int | None = Field(description="The command's exit status; None when a signal ended it.")
    timed_out: bool


class File(_FromSdk):
    path: str
    type: str = Field(description="file, dir, symlink or other.")
    size: int
    mode: str = Field(description="Permission bits in octal, e.g. 644.")
    mtime: float
    symlink_target: str | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, mode: int | str) -> str:
        return f"{mode:o}" if isinstance(mode, int) else mode


class Listing(BaseModel):
    path: str
    entries: list[File]
