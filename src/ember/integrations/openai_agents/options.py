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
    exposed_ports: tuple[int, ...] = ()

    def sandbox_spec(self) -> dict[str, Any]:
        """The keyword arguments of ``AsyncSandbox.create`` these options describe."""
        return {
            "template": self.template,
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "disk_mb": self.disk_mb,
            "env": dict(self.env) or None,
            "timeout": self.timeout,
            "idle_timeout": self.idle_timeout,
        }
