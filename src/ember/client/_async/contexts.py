"""``sandbox.contexts``: REPL contexts, each its own interpreter with its own state and cwd.

Every sandbox has a default context per language; ``run_code(context=...)`` picks another.
"""

from __future__ import annotations

import builtins

from ember.client._async.transport import AsyncTransport
from ember.client._models import parse, parse_list
from ember.protocol.messages import ContextInfo


def context_id_of(context: ContextInfo | str | None) -> str | None:
    return context.context_id if isinstance(context, ContextInfo) else context


class AsyncContexts:
    def __init__(self, transport: AsyncTransport, sandbox_path: str) -> None:
        self._transport = transport
        self._path = f"{sandbox_path}/contexts"

    async def create(self, language: str = "python", cwd: str | None = None) -> ContextInfo:
        """A fresh interpreter (``python`` or ``bash``) starting in `cwd` (default /app)."""
        data = await self._transport.json("POST", self._path, json={"language": language, "cwd": cwd})
        return parse(ContextInfo, data)

    async def list(self) -> builtins.list[ContextInfo]:
        return parse_list(ContextInfo, await self._transport.json("GET", self._path), "contexts")

    async def delete(self, context: ContextInfo | str) -> None:
        """End the context's interpreter and forget it."""
        await self._transport.request("DELETE", f"{self._path}/{context_id_of(context)}")

    async def restart(self, context: ContextInfo | str) -> ContextInfo:
        """A fresh interpreter in place of the context's (its variables are lost)."""
        data = await self._transport.json("POST", f"{self._path}/{context_id_of(context)}/restart")
        return parse(ContextInfo, data)
