"""``AsyncCluster``: a cluster's state as one of its members sees it (needs an admin key)."""

from __future__ import annotations

from typing import Any, Self

from ember.client._async.transport import AsyncTransport
from ember.client._config import DEFAULT_REQUEST_TIMEOUT_S, resolve_config


class AsyncCluster:
    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._transport = AsyncTransport(resolve_config(api_key, base_url, request_timeout))

    async def status(self) -> dict[str, Any]:
        """``{"member", "etcd": {"members", "writable"}, "hosts": [...]}`` (see ``GET /v1/cluster``);
        a daemon that is not in a cluster answers ``not_found``."""
        return await self._transport.json("GET", "/v1/cluster")  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
