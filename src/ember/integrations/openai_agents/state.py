"""``EmberSandboxSessionState``: what a session saves to be resumed in another process."""

from __future__ import annotations

from typing import Literal

from agents.sandbox.session.sandbox_session_state import SandboxSessionState
from pydantic import Field

from ember.integrations.openai_agents.options import EmberSandboxClientOptions


class EmberSandboxSessionState(SandboxSessionState):
    """The SDK's session state plus the Ember sandbox's id and the options that made it.

    ``ember_snapshot_id`` is the session's latest Ember snapshot (``workspace_persistence="snapshot"``).
    """

    type: Literal["ember"] = "ember"
    sandbox_id: str
    options: EmberSandboxClientOptions = Field(default_factory=EmberSandboxClientOptions)
    ember_snapshot_id: str | None = None
