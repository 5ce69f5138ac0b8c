"""A drop-in backend for E2B's SDKs: E2B's control plane, envd and code interpreter on Ember's engine.

Point ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` at the daemon and ``E2B_API_KEY``
at an Ember API key (``ember e2b-env``), and programs written for E2B run
unchanged. It is another face of the same engine, mounted in the same app.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from ember.server.deps import Service
from ember.server.e2b import connect, filesystem, interpreter, process, watchers
from ember.server.e2b.control import create_control_app
from ember.server.e2b.plane import ENVD_PORT, INTERPRETER_PORT, AccessTokens, SandboxPlane
from ember.server.e2b.watchers import Watchers

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def plane_options(service: Service, domain: str | None, watches: Watchers) -> dict[str, Any]:
    """The keyword arguments of ``SandboxPlane`` (``app.add_middleware(SandboxPlane, **options)``);
    ``watches`` are E2B's polled directory watchers, which the caller's app closes."""
    tokens = AccessTokens(service.manager.settings.data_dir / "e2b-token-secret")
    served = [*process.routes, *filesystem.routes, *watchers.routes, *filesystem.http_routes]
    envd = Starlette(routes=[*served, Route("/{path:path}", connect.unimplemented, methods=_METHODS)])
    envd.state.watchers = watches
    return {
        "service": service,
        "tokens": tokens,
        "ports": {ENVD_PORT: envd, INTERPRETER_PORT: Starlette(routes=interpreter.routes)},
        "control": create_control_app(service, tokens),
        "domain": domain,
    }


__all__ = ["SandboxPlane", "Watchers", "plane_options"]
