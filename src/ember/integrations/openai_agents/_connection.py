"""The daemon a client and its sessions talk to, and the few sandbox calls made by id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ember import errors
from ember.client import AsyncSandbox
from ember.integrations.openai_agents.options import EmberSandboxClientOptions

#: Metadata naming the SDK session a sandbox or snapshot serves (``ember ls`` shows it).
SESSION_METADATA_KEY = "openai_agents_session"


@dataclass(frozen=True)
class Connection:
    """The daemon's URL and API key (None: ``EMBER_URL`` / ``EMBER_API_KEY`` or the local default)."""

    base_url: str | None = None
    api_key: str | None = None

    async def start(
        self, options: EmberSandboxClientOptions, session_id: uuid.UUID, snapshot_id: str | None = None
    ) -> AsyncSandbox:
        """A new sandbox for the session, or one restored from its Ember snapshot."""
        metadata = {**options.metadata, SESSION_METADATA_KEY: str(session_id)}
        return await AsyncSandbox.create(
            **options.sandbox_spec(snapshot_id),
            metadata=metadata,
            api_key=self.api_key,
            base_url=self.base_url,
        )

    async def reattach(self, sandbox_id: str) -> AsyncSandbox | None:
        """The running sandbox `sandbox_id`, or None when it ended or never existed here."""
        try:
            sandbox = await AsyncSandbox.connect(sandbox_id, api_key=self.api_key, base_url=self.base_url)
        except errors.SandboxNotFoundError:
            return None
        if (await sandbox.info()).state == "running":
            return sandbox
        await sandbox.close()
        return None

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete an Ember snapshot; one already gone is fine."""
        try:
            await AsyncSandbox.delete_snapshot(snapshot_id, api_key=self.api_key, base_url=self.base_url)
        except errors.SnapshotNotFoundError:
            pass
