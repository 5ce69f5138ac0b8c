"""What an Ember sandbox for the OpenAI Agents SDK is made of: ``EmberSandboxClientOptions``.

The options travel inside the serialised session state, so a resumed session can
start an identical sandbox when the old one is gone. They hold no credentials:
the daemon's URL and API key belong to ``EmberSandboxClient``.
"""

from __future__ import annotations

from typing import Any, Literal

from agents.sandbox.session.sandbox_client import BaseSandboxClientOptions
from pydantic import Field

BACKEND_ID = "ember"


class EmberSandboxClientOptions(BaseSandboxClientOptions):
    """How to start the sandbox: its template or size, base environment and lifetime.

    ``keep_alive`` leaves the sandbox running when the session ends (a run's end
    included), so a session resumed from the saved state reattaches to it with its
    processes and memory intact; ``timeout`` and ``idle_timeout`` still end it.
    Without it the sandbox is killed at the end, and a resumed session starts a new
    one and restores the workspace from the session's snapshot (if it has one).

    ``workspace_persistence`` says what that snapshot holds: ``"tar"`` (the
    workspace's files, portable to any backend) or ``"snapshot"`` (the id of an
    Ember snapshot of the whole sandbox: memory, processes and disk, so a resumed
    session continues where the last one stopped). A session keeps one Ember
    snapshot: each persist deletes the one before it; the last stays until deleted.
    """

    type: Literal["ember"] = "ember"
    template: str | None = None
    vcpus: int = Field(default=2, ge=1)
    memory_mb: int = Field(default=512, ge=128)
    disk_mb: int | None = Field(default=None, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=3600, gt=0)
    idle_timeout: float | None = Field(default=None, gt=0)
    metadata: dict[str, str] = Field(default_factory=dict)
    keep_alive: bool = False
    workspace_persistence: Literal["tar", "snapshot"] = "tar"
    exposed_ports: tuple[int, ...] = ()
    #: Ember's network policy: "none" (default), "full", or {"domains", "cidrs", "packages"}.
    #: Exposed ports need a network, and a daemon with EMBER_DOMAIN (host-based port URLs).
    network: str | dict[str, Any] | None = None

    def sandbox_spec(self, snapshot_id: str | None = None) -> dict[str, Any]:
        """``AsyncSandbox.create`` arguments: a new sandbox, or one restored from a snapshot."""
        origin = {"snapshot": snapshot_id} if snapshot_id is not None else {"template": self.template}
        return {
            **origin,
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "disk_mb": self.disk_mb,
            "env": dict(self.env) or None,
            "timeout": self.timeout,
            "idle_timeout": self.idle_timeout,
            "network": self.network,
        }
