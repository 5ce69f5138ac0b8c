"""The FastAPI application: wiring, authentication, error bodies, body-size limits.

Routes live in ``ember.server.routes``, one module per resource; they call the
engine and translate. Every error leaves as ``{"code", "message"}`` with the
status of its class in ``ember.errors``.
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ember.errors import (
    EmberError,
    PayloadTooLargeError,
)
from ember.server import failures, openapi
from ember.server.deps import Service, ember_version
from ember.server.e2b import SandboxPlane, Watchers, plane_options
from ember.server.routes import code, commands, files, keys, ports, pty, sandboxes, snapshots

log = logging.getLogger("ember.server")
# Bodies that stream through: file uploads and whatever goes to an exposed port.
_STREAMED_BODY = re.compile(r"/v1/sandboxes/[^/]+/(files|ports/\d+/.*)")


def _render(error: EmberError) -> JSONResponse:
    """Ember's error body: ``{"code", "message"}``, and ``details`` where the error has them."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    return JSONResponse(body, status_code=error.status)


class _BodyLimit:
    """Pure ASGI middleware: refuses request bodies over the limit, streamed or not.

    File uploads (PUT .../files, and E2B's POST /files) get the upload limit;
    every other body the (small) JSON limit. A Content-Length over the limit is refused before any
    byte is read; a streamed body is cut off when it crosses the limit.
    """

    def __init__(self, app: Any, get_service: Callable[[], Service]) -> None:
        self.app = app
        self._service = get_service

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self._service()
        match = _STREAMED_BODY.fullmatch(scope["path"])
        is_upload = (match is not None and (match[1] != "files" or scope["method"] == "PUT")) or (
            scope["method"] == "POST" and scope["path"] == "/files"  # E2B's upload
        )
        limit = settings.max_upload_bytes if is_upload else settings.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _render(PayloadTooLargeError(f"request body over {limit} bytes"))(scope, receive, send)
                return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(service_: Service) -> FastAPI:
    """The ASGI app over an engine that this app starts and stops with its lifespan."""
    e2b_watchers = Watchers()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service_.manager.start()
        timeout = httpx.Timeout(None, connect=ports.CONNECT_TIMEOUT_S)
        app.state.port_client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        # What the daemon loaded to start (modules, the app, its routes and models) lives as
        # long as it does: out of the cyclic collector's passes, which otherwise walked all of
        # it in each full collection (~55 ms of a fork(8)'s CPU, measured with perf).
        gc.freeze()
        try:
            yield
        finally:
            await e2b_watchers.close()
            await app.state.port_client.aclose()
            await service_.manager.close()

    app = FastAPI(
        title="Ember",
        version=ember_version(),
        summary="Self-hosted microVM sandboxes for AI agents",
        lifespan=lifespan,
    )
    app.state.service = service_

    failures.install(app, _render)

    for module in (sandboxes, snapshots, code, commands, files, pty, keys, ports):
        app.include_router(module.router)
    openapi.install(app)
    # E2B's SDKs' requests (control plane, in-sandbox calls) go to their own apps, inside the body limit.
    app.add_middleware(
        SandboxPlane, **plane_options(service_, service_.manager.settings.e2b_domain, e2b_watchers)
    )
    app.add_middleware(_BodyLimit, get_service=lambda: service_)
    app.add_middleware(ports.PortHosts, domain=service_.manager.settings.domain)
    return app
