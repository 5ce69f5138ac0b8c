"""What the engine tells about its sandboxes and snapshots to whoever must know beyond this host.

On one host nobody must: ``Registry`` does nothing. In a cluster (``ember.cluster``)
the host's registry writes each sandbox into the cluster's catalog before the
sandbox is handed out, and publishes snapshots and templates, so that every other
host can route calls to them.
"""

from __future__ import annotations

from ember.engine.store import SandboxRecord


class Registry:
    async def admit(self, record: SandboxRecord) -> None:
        """A sandbox is about to be handed out; raising refuses it (the engine then ends it)."""

    async def saved(self) -> None:
        """Snapshots or templates were taken or deleted; awaited before the caller hears of it."""

    def ended(self, record: SandboxRecord) -> None:
        """A sandbox ended (deleted, lifetime over, died): a notice, not awaited."""
