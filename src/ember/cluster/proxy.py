"""Forwarding one request to the host that must answer it: HTTP both ways streamed, and WebSockets.

The request goes on as it came (method, path, query, headers with the Host, the
body as it arrives), marked ``X-Ember-Forwarded-By`` so that the host answers it
itself and never forwards it again; the answer comes back as it is produced, so
NDJSON streams, file downloads and exposed ports stream through. A WebSocket is
joined to one opened on the host, messages both ways, and its close code and
reason come back; a refused handshake comes back as the host's HTTP answer.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as ws_connect

from ember import errors
from ember.cluster.etcd import TlsFiles
from ember.server.routes.ports import relay

FORWARDED_BY = "x-ember-forwarded-by"
CONNECT_TIMEOUT_S = 5.0
_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
}  # fmt: skip
_WS_OWN = {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}

Scope = dict[str, Any]


class Forwarder:
    """One HTTP client for every forwarded request of this daemon (owned by the node)."""

    def __init__(self, me: str, tls: TlsFiles | None) -> None:
        self.me = me
        self._ssl: ssl.SSLContext | None = tls.context() if tls is not None else None
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            verify=self._ssl if self._ssl is not None else True,
            trust_env=False,
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self.client.aclose()

    def headers(self, scope: Scope, drop: set[bytes] = _HOP_BY_HOP) -> list[tuple[bytes, bytes]]:
        kept = [
            (k, v)
            for k, v in scope.get("headers", [])
            if k.lower() not in drop and k != FORWARDED_BY.encode()
        ]
        return [*kept, (FORWARDED_BY.encode(), self.me.encode())]

    # ------------------------------------------------------------ HTTP

    async def http(self, address: str, host_name: str, scope: Scope, receive: Any, send: Any) -> None:
        """Forward to ``address`` (the API of host ``host_name``) and stream its answer back."""
        request = self.client.build_request(
            scope["method"],
            _url(address, scope),
            headers=self.headers(scope),
            content=_body(receive),
        )
        try:
            answer = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise errors.HostUnavailableError(
                f"host {host_name} ({address}) did not answer ({type(exc).__name__}); it may have "
                "just failed: try again, or wait for the cluster to report its sandboxes"
            ) from exc
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status_code,
                    "headers": [(k, v) for k, v in answer.headers.raw if k.lower() not in _HOP_BY_HOP],
                }
            )
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await answer.aclose()

    async def call(
        self, address: str, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> httpx.Response:
        """One small request of this daemon's own to a host (listings, status)."""
        return await self.client.request(method, address + path, headers=headers, timeout=10.0)

    # ------------------------------------------------------------ WebSocket

    async def websocket(self, address: str, host_name: str, scope: Scope, receive: Any, send: Any) -> None:
        client = WebSocket(scope, receive, send)
        url = "ws" + _url(address, scope)[len("http") :]
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in self.headers(scope, drop=_HOP_BY_HOP | _WS_OWN | {b"host"})
        ]
        offered = scope.get("subprotocols") or None
        try:
            upstream = await ws_connect(
                url,
                additional_headers=headers,
                subprotocols=offered,
                open_timeout=CONNECT_TIMEOUT_S,
                ssl=self._ssl if url.startswith("wss:") else None,
                max_size=None,
            )
        except websockets.InvalidStatus as exc:
            answer = exc.response
            refused = Response(
                answer.body or b"",
                status_code=answer.status_code,
                media_type=answer.headers.get("content-type"),
            )
            await client.send_denial_response(refused)
            return
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            body = {
                "code": "host_unavailable",
                "message": f"host {host_name} did not take the WebSocket: {exc}",
            }
            await client.send_denial_response(JSONResponse(body, 503))
            return
        async with upstream:
            await client.accept(subprotocol=upstream.subprotocol)
            await relay(client, upstream)


def _url(address: str, scope: Scope) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    return address + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


async def _body(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
