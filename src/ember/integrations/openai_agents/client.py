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

from ember import errors
from ember.client import AsyncSandbox
from ember.integrations.openai_agents.options import BACKEND_ID, EmberSandboxClientOptions
from ember.integrations.openai_agents.session import EmberSandboxSession
from ember.integrations.openai_agents.state import EmberSandboxSessionState

#: Metadata key naming the SDK session a sandbox serves (``ember ls`` and ``AsyncSandbox.list`` show it).
SESSION_METADATA_KEY = "openai_agents_session"


class EmberSandboxClient(BaseSandboxClient[EmberSandboxClientOptions]):
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
        self._base_url = base_url
        self._api_key = api_key
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
        sandbox = await self._start_sandbox(options, session_id)
        state = EmberSandboxSessionState(
            session_id=session_id,
            manifest=manifest,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            sandbox_id=sandbox.id,
            options=options,
            exposed_ports=options.exposed_ports,
        )
        return self._wrap_session(EmberSandboxSession(state, sandbox), instrumentation=self._instrumentation)

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """Reattach to the state's sandbox if it still runs, else start a new one in its place.

        A reattached sandbox keeps its workspace (and processes); a new one gets the
        workspace from the state's snapshot, or the manifest when there is none.
        """
        if not isinstance(state, EmberSandboxSessionState):
            raise TypeError("EmberSandboxClient.resume expects an EmberSandboxSessionState")
        state.assert_path_grants_rebound()
        sandbox = await self._reattach(state.sandbox_id)
        reattached = sandbox is not None
        if sandbox is None:
            sandbox = await self._start_sandbox(state.options, state.session_id)
            state.sandbox_id = sandbox.id
            state.workspace_root_ready = False
        session = EmberSandboxSession(state, sandbox)
        session._set_start_state_preserved(reattached)
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

    async def _start_sandbox(self, options: EmberSandboxClientOptions, session_id: uuid.UUID) -> AsyncSandbox:
        metadata = {**options.metadata, SESSION_METADATA_KEY: str(session_id)}
        return await AsyncSandbox.create(
            **options.sandbox_spec(), metadata=metadata, api_key=self._api_key, base_url=self._base_url
        )

    async def _reattach(self, sandbox_id: str) -> AsyncSandbox | None:
        """The running sandbox `sandbox_id`, or None when it ended or never existed here."""
        try:
            sandbox = await AsyncSandbox.connect(sandbox_id, api_key=self._api_key, base_url=self._base_url)
        except errors.SandboxNotFoundError:
            return None
        if (await sandbox.info()).state == "running":
            return sandbox
        await sandbox.close()
        return None
