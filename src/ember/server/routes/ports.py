"""Exposed ports: a guest port served through the daemon, HTTP and WebSocket, streaming both ways.

``POST .../ports`` exposes a port of a sandbox that has a network and returns
its URL and a token for it alone. Requests to ``/v1/sandboxes/{id}/ports/{port}/...``
(or ``{port}-{id}.{domain}`` when the daemon has a domain, rewritten to that
path by ``PortHosts``) reach the guest's address on that port, authorised by
the owner's API key or the port's token (header, query or the cookie a token
query sets, so a browser preview's own links keep working).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from typing import Annotated, Any

import httpx
import websockets
from fastapi import APIRouter, Depends, Path, Request, Response, Security, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from fastapi.security import APIKeyHeader
from starlette.background import BackgroundTask
from websockets.asyncio.client import connect as ws_connect

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.server.deps import BEARER, bearer_token, sandbox, service
from ember.server.models import ExposePort, PortInfo, PortList
from ember.server.openapi import AUTH, BODY, INPUT, SANDBOX, errors_of

router = APIRouter(tags=["ports"])
PortNumber = Annotated[int, Path(ge=1, le=65535)]

TOKEN_HEADER = "x-ember-port-token"
TOKEN_QUERY = "ember_token"
CONNECT_TIMEOUT_S = 10.0
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", TOKEN_HEADER,
    # E2B's routing and access headers (the E2B plane forwards other ports here too).
    "e2b-sandbox-id", "e2b-sandbox-port", "e2b-traffic-access-token",
}  # fmt: skip
_PORT_HOST = re.compile(r"(?P<port>\d{1,5})-(?P<id>[0-9a-f]{16})\.(?P<domain>.+)")


def _cookie(port: int) -> str:
    return f"ember_port_{port}"


def _info(request: Request, box: Sandbox, port: int, token: str) -> PortInfo:
    domain = service(request).manager.settings.domain
    if domain:
        authority = f"{port}-{box.id}.{domain}"
        if request.url.port:
            authority += f":{request.url.port}"
        url = f"{request.url.scheme}://{authority}/"
    else:
        url = str(request.base_url).rstrip("/") + f"/v1/sandboxes/{box.id}/ports/{port}/"
    return PortInfo(port=port, url=url, token=token)


@router.post(
    "/v1/sandboxes/{sandbox_id}/ports",
    status_code=201,
    response_model=PortInfo,
    responses=errors_of(
        AUTH,
        BODY,
        SANDBOX,
        errors.SandboxNotRunningError,
        errors.SandboxDeadError,
        errors.NetworkDisabledError,
    ),
)
def expose(body: ExposePort, request: Request, box: Sandbox = Depends(sandbox)) -> PortInfo:
    return _info(request, box, body.port, box.expose(body.port))


@router.get("/v1/sandboxes/{sandbox_id}/ports", response_model=PortList, responses=errors_of(AUTH, SANDBOX))
def list_ports(request: Request, box: Sandbox = Depends(sandbox)) -> PortList:
    ports = sorted((int(port), token) for port, token in box.record.ports.items())
    return PortList(ports=[_info(request, box, port, token) for port, token in ports])


@router.delete(
    "/v1/sandboxes/{sandbox_id}/ports/{port}",
    status_code=204,
    responses=errors_of(AUTH, INPUT, SANDBOX, errors.PortNotExposedError),
)
def unexpose(port: PortNumber, box: Sandbox = Depends(sandbox)) -> Response:
    box.unexpose(port)
    return Response(status_code=204)


def _target(conn: Request | WebSocket, sandbox_id: str, port: int) -> tuple[str, bool]:
    """The guest address for an authorised caller, and whether the API key was what authorised it."""
    manager = service(conn).manager  # type: ignore[arg-type]
    given = (
        conn.headers.get(TOKEN_HEADER)
        or conn.query_params.get(TOKEN_QUERY)
        or conn.cookies.get(_cookie(port))
    )
    if given is not None:
        address, token = manager.get(sandbox_id).port_target(port)
        if secrets.compare_digest(given, token):
            return address, False
        raise errors.AuthenticationError("wrong port token")
    key = service(conn).keys.verify(bearer_token(conn.headers.get("authorization")))  # type: ignore[arg-type]
    address, _ = manager.get(sandbox_id, owner=None if key.admin else key.id).port_target(port)
    return address, True


def _forward_headers(conn: Request | WebSocket, used_key: bool) -> dict[str, str]:
    headers = {k: v for k, v in conn.headers.items() if k.lower() not in _HOP_BY_HOP}
    if used_key:
        headers.pop("authorization", None)  # the Ember key is not the guest app's business
    client = conn.client.host if conn.client else ""
    headers["x-forwarded-for"] = client
    headers["x-forwarded-proto"] = conn.url.scheme.replace("ws", "http")
    headers["x-forwarded-host"] = conn.headers.get("host", "")
    return headers


def _guest_url(address: str, port: int, path: str, query: str, scheme: str = "http") -> str:
    pairs = [p for p in query.split("&") if p and not p.startswith(f"{TOKEN_QUERY}=")]
    return f"{scheme}://{address}:{port}/{path}" + (f"?{'&'.join(pairs)}" if pairs else "")


async def proxy(sandbox_id: str, port: PortNumber, path: str, request: Request) -> StreamingResponse:
    """Whatever the server on that port of the sandbox answers, streamed (any status, any body)."""
    address, used_key = _target(request, sandbox_id, port)
    response = await forward(request, address, port, path, used_key)
    given = request.query_params.get(TOKEN_QUERY)
    if given is not None:
        prefix = f"/v1/sandboxes/{sandbox_id}/ports/{port}/"
        response.set_cookie(_cookie(port), given, path=prefix, httponly=True, samesite="lax")
    return response


_PROXY_ERRORS = errors_of(
    AUTH,
    INPUT,
    SANDBOX,
    errors.SandboxNotRunningError,
    errors.SandboxDeadError,
    errors.PortNotExposedError,
    errors.PortUnreachableError,
)
#: The owner's API key, or the port's token (header; or query ember_token, or its cookie): either.
_PROXY_AUTH = [
    Security(BEARER),
    Security(APIKeyHeader(name=TOKEN_HEADER, scheme_name="PortToken", auto_error=False)),
]
# One route per method, so that each has its own operation id in the spec.
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
    router.add_api_route(
        "/v1/sandboxes/{sandbox_id}/ports/{port}/{path:path}",
        proxy,
        methods=[_method],
        name=f"proxy_{_method.lower()}",
        response_class=StreamingResponse,
        responses={"default": {"description": "the guest server's answer"}} | _PROXY_ERRORS,
        dependencies=_PROXY_AUTH,
    )


@router.websocket("/v1/sandboxes/{sandbox_id}/ports/{port}/{path:path}")
async def proxy_websocket(websocket: WebSocket, sandbox_id: str, port: int, path: str) -> None:
    try:
        address, used_key = _target(websocket, sandbox_id, port)
    except errors.EmberError as exc:
        await websocket.close(code=4000 + min(exc.status, 999), reason=exc.message[:120])
        return
    await forward_websocket(websocket, address, port, path, used_key)


async def forward(request: Request, address: str, port: int, path: str, used_key: bool) -> StreamingResponse:
    """Send ``request`` to the guest's ``address:port/path`` and stream the answer back (both ways)."""
    client: httpx.AsyncClient = request.app.state.port_client
    outgoing = client.build_request(
        request.method,
        _guest_url(address, port, path, request.url.query),
        headers=_forward_headers(request, used_key),
        content=request.stream(),
    )
    try:
        answer = await client.send(outgoing, stream=True)
    except httpx.TransportError as exc:
        raise errors.PortUnreachableError(
            f"nothing answered on port {port} of the sandbox ({type(exc).__name__}); "
            "is a server listening on 0.0.0.0 there?"
        ) from exc
    response = StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
    )
    response.raw_headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in answer.headers.multi_items()
        if k.lower() not in _HOP_BY_HOP
    ]
    return response


async def forward_websocket(websocket: WebSocket, address: str, port: int, path: str, used_key: bool) -> None:
    """Join ``websocket`` to a WebSocket on the guest's ``address:port/path``, messages both ways."""
    headers = _forward_headers(websocket, used_key)
    for name in (
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    ):
        headers.pop(name, None)
    url = _guest_url(address, port, path, websocket.url.query, scheme="ws")
    offered = websocket.scope.get("subprotocols") or None
    try:
        guest = await ws_connect(
            url, additional_headers=headers, subprotocols=offered, open_timeout=CONNECT_TIMEOUT_S
        )
    except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
        await websocket.close(code=1011, reason=f"port {port} did not accept the WebSocket: {exc}"[:120])
        return
    async with guest:
        await websocket.accept(subprotocol=guest.subprotocol)
        await relay(websocket, guest)


async def relay(client: WebSocket, upstream: Any) -> None:
    """Messages both ways between ``client`` and a ``websockets`` connection until one side closes;
    the other is then closed with the same code and reason."""

    async def up() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(message.get("code", 1000), message.get("reason") or "")
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text", ""))

    async def down() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for data in upstream:
                if isinstance(data, bytes):
                    await client.send_bytes(data)
                else:
                    await client.send_text(data)
        code = upstream.close_code if upstream.close_code not in (None, 1005, 1006) else 1000
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await client.close(code, upstream.close_reason or None)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(
                asyncio.CancelledError, WebSocketDisconnect, websockets.ConnectionClosed
            ):
                await task
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await client.close()


class PortHosts:
    """ASGI middleware: ``{port}-{id}.{domain}`` requests become the path-based port route."""

    def __init__(self, app: Any, domain: str | None) -> None:
        self.app = app
        self.domain = domain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.domain and scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1").split(":")[0].lower()
            match = _PORT_HOST.fullmatch(host)
            if match and match["domain"] == self.domain:
                path = f"/v1/sandboxes/{match['id']}/ports/{match['port']}{scope['path']}"
                scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)
