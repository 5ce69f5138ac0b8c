"""``EmberSandboxClient``: creates, resumes and deletes Ember-backed sandbox sessions.

Pass it as ``RunConfig(sandbox=SandboxRunConfig(client=EmberSandboxClient(),
options=EmberSandboxClientOptions(...)))``. The daemon's URL and API key come
from the arguments or ``EMBER_URL`` / ``EMBER_API_KEY``, as for ``AsyncSandbox``.
"""

from __future__ import annotations

import uuid

from agents.sandbox.manifest import Manifest
from agents.sandbox.session import SandboxSession, SandboxSessionState
from agents.sandbox.session.dependencies import Dependencies
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.sandbox_client import BaseSandboxClient
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot

from ember.integrations.openai_agents._connection import Connection
from ember.integrations.openai_agents.options import BACKEND_ID, EmberSandboxClientOptions
from ember.integrations.openai_agents.session import EmberSandboxSession
from ember.integrations.openai_agents.state import EmberSandboxSessionState


class EmberSandboxClient(BaseSandboxClient[EmberSandboxClientOptions]):
    """The SDK's sandbox client for one Ember daemon; it holds the credentials, sessions hold sandboxes."""

    backend_id = BACKEND_ID
    supports_default_options = True

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        instrumentation: Instrumentation | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self._connection = Connection(base_url, api_key)
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = dependencies

    async def create(
        self,
        *,
        snapshot: SnapshotSpec | SnapshotBase | None = None,
        manifest: Manifest | None = None,
        options: EmberSandboxClientOptions | None = None,
    ) -> SandboxSession:
        """Start a new sandbox; the session's ``start()`` then lays out the manifest in it."""
        options = options or EmberSandboxClientOptions()
        manifest = self._validate_manifest_for_create(manifest or Manifest())
        session_id = uuid.uuid4()
        sandbox = await self._connection.start(options, session_id)
        state = EmberSandboxSessionState(
            session_id=session_id,
            manifest=manifest,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            sandbox_id=sandbox.id,
            options=options,
            exposed_ports=options.exposed_ports,
        )
        session = EmberSandboxSession(state, sandbox, self._connection)
        return self._wrap_session(session, instrumentation=self._instrumentation)

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """Reattach to the state's sandbox if it still runs, else start a new one in its place.

        A reattached sandbox keeps its workspace (and processes); a new one gets the
        workspace from the state's snapshot, or the manifest when there is none. With
        ``workspace_persistence="snapshot"`` the new one is restored from the session's
        Ember snapshot, so it too starts with its workspace (and processes) in place.
        """
        if not isinstance(state, EmberSandboxSessionState):
            raise TypeError("EmberSandboxClient.resume expects an EmberSandboxSessionState")
        state.assert_path_grants_rebound()
        sandbox = await self._connection.reattach(state.sandbox_id)
        preserved = sandbox is not None
        if sandbox is None:
            snapshot_id = (
                state.ember_snapshot_id if state.options.workspace_persistence == "snapshot" else None
            )
            sandbox = await self._connection.start(state.options, state.session_id, snapshot_id)
            state.sandbox_id = sandbox.id
            preserved = snapshot_id is not None
            state.workspace_root_ready = preserved
        session = EmberSandboxSession(state, sandbox, self._connection)
        session._set_start_state_preserved(preserved)
        return self._wrap_session(session, instrumentation=self._instrumentation)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Release the session's sandbox (killed unless ``keep_alive``); shutdown already did it."""
        inner = session._inner
        if not isinstance(inner, EmberSandboxSession):
            raise TypeError("EmberSandboxClient.delete expects an EmberSandboxSession")
        await inner._shutdown_backend()
        return session

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, EmberSandboxSessionState)
