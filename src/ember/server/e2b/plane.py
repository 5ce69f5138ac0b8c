"""The in-sandbox plane: which sandbox and port a request is for, and whether it may reach it.

E2B's SDKs send every in-sandbox call to one URL (``E2B_SANDBOX_URL``) with the
headers ``E2b-Sandbox-Id`` and ``E2b-Sandbox-Port``, or, on a domain, to the host
``{port}-{sandbox_id}.{domain}``. ``SandboxPlane`` is the ASGI middleware that
recognises such requests and hands them to the app for that port (envd's on
49983, the code interpreter's on 49999) with the sandbox resolved; E2B's control
plane paths go to its app, and every other request on to Ember's own API.

Access: each sandbox gets an envd access token (``envdAccessToken`` at create),
an HMAC of its id under a secret kept in the data directory, so it survives a
daemon restart without being stored anywhere. It is also the sandbox's traffic
access token, so every in-sandbox call of the SDKs carries it, as
``X-Access-Token`` (envd, ``/execute``) or ``E2B-Traffic-Access-Token`` (the code
interpreter's context calls), and none gets through without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import posixpath
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.server.deps import Service
from ember.server.routes import ports

ENVD_PORT = 49983
INTERPRETER_PORT = 49999
#: Where E2B's sandboxes work: the home of its default user (Ember's guest has the same user).
E2B_HOME = "/home/user"
#: The envd release whose features Ember serves (stdin, closing stdin, octet-stream uploads, ...).
ENVD_VERSION = "0.6.4"

#: E2B's control plane lives under these paths (its spec under /e2b/); Ember's own API is under /v1.
CONTROL_PATHS = ("/sandboxes", "/v2/sandboxes", "/snapshots", "/templates", "/e2b/")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Any], Awaitable[None]]


class AccessTokens:
    """Per-sandbox envd access tokens derived from one secret file (created 0600 on first use)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            if not self._path.exists():
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(secrets.token_bytes(32))
            self._secret = self._path.read_bytes()
        return self._secret

    def token(self, sandbox_id: str) -> str:
        return hmac.new(self._key(), sandbox_id.encode(), hashlib.sha256).hexdigest()

    def check(self, sandbox_id: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.token(sandbox_id), token)


def sandbox_of(request: Request) -> Sandbox:
    """The running sandbox this in-sandbox request is for (the plane has checked it exists)."""
    return request.scope["ember.e2b.sandbox"]  # type: ignore[no-any-return]


def username(request: Request) -> str | None:
    """The user E2B's SDK asks to act as (``Authorization: Basic base64(user:)``); None: the default."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user = base64.b64decode(header[6:], validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        raise errors.InvalidRequestError("the Authorization header is not Basic user:") from None
    return user or None


def sandbox_path(path: str) -> str:
    """A path as E2B's envd reads it: a relative one is under the home directory."""
    return path if posixpath.isabs(path) else posixpath.join(E2B_HOME, path)


def working_directory(cwd: str | None, user: str | None) -> str:
    """E2B starts processes in the user's home unless told otherwise."""
    if cwd:
        return sandbox_path(cwd)
    return "/root" if user == "root" else E2B_HOME


def _proxy_error(status: int, message: str, sandbox_id: str) -> JSONResponse:
    # E2B's proxy answers like this; the SDK maps "was not found" to SandboxNotRunning.
    return JSONResponse({"code": status, "message": message, "sandboxId": sandbox_id}, status_code=status)


class SandboxPlane:
    """ASGI middleware: in-sandbox requests to the port's app, everything else to Ember's API."""

    def __init__(
        self,
        app: ASGIApp,
        service: Service,
        tokens: AccessTokens,
        ports: dict[int, ASGIApp],
        control: ASGIApp,
        domain: str | None = None,
    ) -> None:
        self.app = app
        self._control = control
        self._service = service
        self._tokens = tokens
        self._ports = ports
        self._host = re.compile(rf"(\d+)-([0-9a-zA-Z]+)\.{re.escape(domain)}(:\d+)?") if domain else None

    def _target(self, scope: dict[str, Any]) -> tuple[str, str] | None:
        headers = {name: value for name, value in scope.get("headers", [])}
        sandbox_id = headers.get(b"e2b-sandbox-id")
        if sandbox_id is not None:
            return sandbox_id.decode("latin-1"), headers.get(b"e2b-sandbox-port", b"").decode("latin-1")
        if self._host is not None and (host := headers.get(b"host")) is not None:
            match = self._host.fullmatch(host.decode("latin-1"))
            if match:
                return match.group(2), match.group(1)
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        target = self._target(scope) if scope["type"] in ("http", "websocket") else None
        if target is None:
            is_control = scope["type"] == "http" and scope["path"].startswith(CONTROL_PATHS)
            await (self._control if is_control else self.app)(scope, receive, send)
            return
        sandbox_id, port_text = target
        port = int(port_text) if port_text.isdigit() else ENVD_PORT
        try:
            box = self._service.manager.get(sandbox_id)
        except errors.SandboxNotFoundError:
            box = None
        app = self._ports.get(port)
        if box is None or (scope["type"] != "http" and app is not None):
            response = _proxy_error(502, f"The sandbox {sandbox_id} was not found", sandbox_id)
            await response(scope, receive, send)
            return
        if app is None:
            await self._other_port(box, port, scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        token = headers.get(b"x-access-token") or headers.get(b"e2b-traffic-access-token")
        if token is None or not self._tokens.check(sandbox_id, token.decode("latin-1")):
            message = "a valid X-Access-Token for this sandbox is required"
            await _proxy_error(401, message, sandbox_id)(scope, receive, send)
            return
        await app({**scope, "ember.e2b.sandbox": box}, receive, send)

    @staticmethod
    async def _other_port(box: Sandbox, port: int, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Any other port: the server in the guest, over the sandbox's network (public, as on E2B)."""
        if box.lease is None:
            message = f"The sandbox {box.id} is running but port {port} is not open: it has no network"
            await _proxy_error(502, message, box.id)(scope, receive, send)
            return
        address, path = box.lease.addressing.guest_ip, scope["path"].lstrip("/")
        if scope["type"] == "websocket":
            await ports.forward_websocket(
                WebSocket(scope, receive, send), address, port, path, used_key=False
            )
            return
        try:
            response = await ports.forward(Request(scope, receive), address, port, path, used_key=False)
        except errors.PortUnreachableError:
            message = f"The sandbox {box.id} is running but port {port} is not open"
            response = _proxy_error(502, message, box.id)
        await response(scope, receive, send)
