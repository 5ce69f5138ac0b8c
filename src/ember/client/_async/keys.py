"""``AsyncKeys``: the daemon's API keys and their quotas; every call but ``quota()`` needs an admin key.

The daemon keeps only a hash of each key: the secret is in ``CreatedKey.key``,
returned once by ``create()``. A key's quota names its own limits; those it does
not name follow the default (``set_default_quota``); None is no limit.
"""

from __future__ import annotations

import builtins
from typing import Self

from ember.client._async.transport import AsyncTransport
from ember.client._config import DEFAULT_REQUEST_TIMEOUT_S, resolve_config
from ember.client._models import CreatedKey, KeyInfo, QuotaInfo, parse, parse_list


class AsyncKeys:
    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._transport = AsyncTransport(resolve_config(api_key, base_url, request_timeout))

    async def create(self, name: str, admin: bool = False) -> CreatedKey:
        """A new key; `admin=True` lets it manage keys too."""
        data = await self._transport.json("POST", "/v1/keys", json={"name": name, "admin": admin})
        return parse(CreatedKey, data)

    async def list(self) -> builtins.list[KeyInfo]:
        return parse_list(KeyInfo, await self._transport.json("GET", "/v1/keys"), "keys")

    async def revoke(self, key_id: str) -> None:
        """Revoke a key: requests with it get ``unauthorized`` from now on."""
        await self._transport.request("DELETE", f"/v1/keys/{key_id}")

    async def quota(self, key_id: str | None = None) -> QuotaInfo:
        """A key's limits and use (``None``: the calling key's own, which needs no admin)."""
        path = "/v1/quota" if key_id is None else f"/v1/keys/{key_id}/quota"
        return parse(QuotaInfo, await self._transport.json("GET", path))

    async def set_quota(self, key_id: str, limits: dict[str, int | None]) -> QuotaInfo:
        """Replace the key's own limits: fields left out follow the default, None is no limit."""
        data = await self._transport.json("PUT", f"/v1/keys/{key_id}/quota", json=limits)
        return parse(QuotaInfo, data)

    async def default_quota(self) -> dict[str, int | None]:
        return dict(await self._transport.json("GET", "/v1/quota/default"))

    async def set_default_quota(self, limits: dict[str, int | None]) -> dict[str, int | None]:
        """Replace the default limits (left out: no limit)."""
        return dict(await self._transport.json("PUT", "/v1/quota/default", json=limits))

    async def close(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
