"""E2B's control plane bodies as E2B's own spec names them, for the control app's OpenAPI spec.

Routes build these as plain dicts (``E2bFace``); the models say what those hold,
so the spec served at ``/e2b/openapi.json`` (and a client generated from it)
matches what E2B's SDKs read. Fields only some answers carry are optional, and
routes answer with ``response_model_exclude_unset`` so that none is added.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Error(BaseModel):
    """Every error: the HTTP status again as ``code``, and what happened."""

    code: int
    message: str


class Sandbox(BaseModel):
    """A sandbox just created, resumed or connected to."""

    templateID: str
    sandboxID: str
    clientID: str
    envdVersion: str
    envdAccessToken: str | None = None
    trafficAccessToken: str | None = None
    domain: str | None = None


class ListedSandbox(BaseModel):
    templateID: str
    sandboxID: str
    clientID: str
    startedAt: DateTime
    endAt: DateTime
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    state: Literal["running", "paused"]
    envdVersion: str
    metadata: dict[str, str]


class SandboxDetail(ListedSandbox):
    """One sandbox; a running one also carries its envd access token and domain."""

    envdAccessToken: str | None = None
    domain: str | None = None


class ForkedSandbox(BaseModel):
    sandbox: Sandbox


class SnapshotInfo(BaseModel):
    snapshotID: str
    names: list[str]
