"""``ember serve --cluster``: a host of the cluster; ``--gateway``: a member with no VMs that answers the API.

A host is the usual daemon (engine, API) with a ``Node`` in front of it. A
gateway has no engine: every sandbox call goes to the sandbox's host, creates are
placed on hosts, listings merged; it answers itself only ``/health``, the keys
(which live in etcd) and the cluster's status. Its own state is the local copy of
the keys, in ``gateway.db`` in the data directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ember.cluster.node import Node
from ember.cluster.settings import ClusterSettings
from ember.engine.store import Store
from ember.errors import EmberError
from ember.server.app import create_app
from ember.server.daemon import engine, run, setup_logging
from ember.server.deps import Service, ember_version
from ember.server.keys import KeyStore
from ember.server.models import Health
from ember.server.routes import keys
from ember.settings import Settings


def serve_host(
    host: str, port: int, settings: Settings, cluster: ClusterSettings, tls: tuple[str, str] | None = None
) -> None:
    manager = engine(settings)
    node = Node(cluster, settings, manager.store, manager)
    run(node.mount(create_app(Service(manager=manager, keys=node.keys))), host, port, tls)


def serve_gateway(
    host: str, port: int, settings: Settings, cluster: ClusterSettings, tls: tuple[str, str] | None = None
) -> None:
    setup_logging()
    node = Node(cluster, settings, Store(settings.data_dir / "gateway.db"))
    run(node.mount(gateway_app(node)), host, port, tls)


@dataclass(frozen=True)
class _KeysOnly:
    """What a gateway's service has of a daemon's: the key store (no engine)."""

    keys: KeyStore


def gateway_app(node: Node) -> FastAPI:
    """The little a gateway answers itself; the router in front of it forwards the rest."""
    app = FastAPI(title="Ember gateway", version=ember_version())
    # The key routes read only the key store of the service (the router sends quotas to a host).
    app.state.service = _KeysOnly(node.keys)

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        return Health(status="ok", version=ember_version(), acceleration="none (gateway)", protections="")

    @app.exception_handler(EmberError)
    async def ember_error(request: Request, exc: EmberError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)

    app.include_router(keys.router)
    return app
