"""The engine: sandboxes as objects with a lifecycle, driven from Python (asyncio)."""

from ember.engine.channel import AgentCall, AgentClient, Chunk, Event
from ember.engine.manager import SandboxManager
from ember.engine.sandbox import Sandbox, SandboxConfig, SandboxState

__all__ = [
    "AgentCall",
    "AgentClient",
    "Chunk",
    "Event",
    "Sandbox",
    "SandboxConfig",
    "SandboxManager",
    "SandboxState",
]
