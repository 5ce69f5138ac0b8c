"""The sandboxes an MCP server holds: the ones it made stay open, others are joined per call.

Sandboxes this server created (or forked) are killed when it stops, so an agent
that forgets to clean up leaves nothing running; a snapshot keeps what must last.
Sandboxes made elsewhere are reached by id and never killed unless asked. Every
call acts with one API key (an HTTP caller's own, see ``for_key``), and a held
sandbox is found only under the key that made it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Self

from ember.client import AsyncSandbox, SandboxInfo, SnapshotInfo

logger = logging.getLogger(__name__)


class SandboxRegistry:
    """Owner of the MCP server's sandboxes; ``async with`` kills the ones it made on the way out."""

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None) -> None:
        self._api_key = api_key
        #: The daemon's URL as configured (None: EMBER_URL, else the local daemon).
        self.base_url = base_url
        self._owned: dict[tuple[str | None, str], AsyncSandbox] = {}

    def for_key(self, api_key: str) -> SandboxRegistry:
        """This registry acting with `api_key` (the sandboxes held stay shared, each under its key)."""
        view = SandboxRegistry(api_key=api_key, base_url=self.base_url)
        view._owned = self._owned
        return view

    @property
    def _connection(self) -> dict[str, Any]:
        return {"api_key": self._api_key, "base_url": self.base_url}

    async def create(self, **spec: Any) -> AsyncSandbox:
        sandbox = await AsyncSandbox.create(**spec, **self._connection)
        self._owned[self._api_key, sandbox.id] = sandbox
        return sandbox

    def adopt(self, sandboxes: Iterable[AsyncSandbox]) -> None:
        """Take ownership of sandboxes made from one of ours or another (forks)."""
        for sandbox in sandboxes:
            self._owned[self._api_key, sandbox.id] = sandbox

    @asynccontextmanager
    async def use(self, sandbox_id: str) -> AsyncIterator[AsyncSandbox]:
        """The sandbox `sandbox_id`; an unknown id raises ``SandboxNotFoundError``."""
        owned = self._owned.get((self._api_key, sandbox_id))
        if owned is not None:
            yield owned
            return
        joined = await AsyncSandbox.connect(sandbox_id, **self._connection)
        try:
            yield joined
        finally:
            await joined.close()  # lets go of the connection; the sandbox runs on

    async def kill(self, sandbox_id: str) -> None:
        owned = self._owned.pop((self._api_key, sandbox_id), None)
        if owned is None:
            async with self.use(sandbox_id) as sandbox:
                await sandbox.kill()
            return
        try:
            await owned.kill()  # raises when it already ended, which close() would hide
        finally:
            await owned.close()

    async def list(self) -> list[SandboxInfo]:
        return await AsyncSandbox.list(**self._connection)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        templates = await AsyncSandbox.list_templates(**self._connection)
        return templates + await AsyncSandbox.list_snapshots(**self._connection)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await AsyncSandbox.delete_snapshot(snapshot_id, **self._connection)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        owned = list(self._owned.values())
        self._owned.clear()
        results = await asyncio.gather(*(sandbox.close() for sandbox in owned), return_exceptions=True)
        for sandbox, result in zip(owned, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("could not kill sandbox %s on shutdown: %s", sandbox.id, result)
