"""``sandbox.network``: the sandbox's network policy, changed while it runs; and its exposed ports."""

from __future__ import annotations

import builtins
from typing import Any

from ember.client._async.transport import AsyncTransport
from ember.client._models import PortInfo, SandboxInfo, parse, parse_list


class AsyncNetwork:
    def __init__(self, transport: AsyncTransport, sandbox_path: str) -> None:
        self._transport = transport
        self._path = sandbox_path

    async def update(
        self,
        mode: str | None = None,
        *,
        domains: builtins.list[str] | None = None,
        cidrs: builtins.list[str] | None = None,
        packages: bool = False,
    ) -> dict[str, Any]:
        """Apply a new policy now: ``"none"``, ``"full"``, or an allowlist of domains and CIDRs.

        ``packages=True`` adds the registries the daemon host's pip, npm and apt use, and
        points the guest's pip, npm and apt at them.
        Giving domains, cidrs or packages without a mode means ``"allowlist"``.
        Returns the sandbox's network as the daemon now describes it.
        """
        body: dict[str, Any] = {"domains": domains or [], "cidrs": cidrs or [], "packages": packages}
        if mode is not None:
            body["mode"] = mode
        data = await self._transport.json("PUT", f"{self._path}/network", json=body, waits=True)
        return parse(SandboxInfo, data).network

    async def expose(self, port: int) -> PortInfo:
        """Serve guest ``port`` through the daemon; the URL needs the API key or the returned token."""
        return parse(PortInfo, await self._transport.json("POST", f"{self._path}/ports", json={"port": port}))

    async def unexpose(self, port: int) -> None:
        """Close an exposed port's URL."""
        await self._transport.request("DELETE", f"{self._path}/ports/{port}")

    async def ports(self) -> builtins.list[PortInfo]:
        return parse_list(PortInfo, await self._transport.json("GET", f"{self._path}/ports"), "ports")
