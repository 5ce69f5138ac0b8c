"""``ember serve``: the engine and the HTTP API in one process, on uvicorn.

On start it makes sure there is a way in: ``EMBER_API_KEY`` becomes an admin key
(stored as a hash); without it, a first start creates an admin key and prints it
once. SIGINT/SIGTERM shut down cleanly: in-flight requests finish, then every
sandbox ends (a crashed daemon instead leaves them running, and the next start
reattaches to them).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from typing import Any

import uvicorn

from ember.engine import SandboxManager
from ember.server import memory_report
from ember.server.app import create_app
from ember.server.deps import Service
from ember.server.keys import KeyStore
from ember.settings import Settings

log = logging.getLogger("ember.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7070


def bootstrap_keys(keys: KeyStore) -> None:
    configured = os.environ.get("EMBER_API_KEY")
    if configured:
        keys.ensure(configured, name="EMBER_API_KEY")
        return
    if not keys.has_admin():
        _, secret = keys.create("admin", admin=True)
        print(
            "Created the first admin API key (shown only now; store it safely):\n"
            f"    export EMBER_API_KEY={secret}",
            file=sys.stderr,
            flush=True,
        )


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: every sandbox holds a few
    sockets and files, and the usual soft 1024 would end a few hundred sandboxes
    with EMFILE long before memory runs out. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # an unlimited hard limit is above what the kernel allows
        return soft
    return hard


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    settings: Settings | None = None,
    tls: tuple[str, str] | None = None,
) -> None:
    """Run the daemon until interrupted (``tls``: its certificate and key files, for HTTPS)."""
    manager = engine(settings or Settings.from_env())
    keys = KeyStore(manager.store)
    bootstrap_keys(keys)
    run(create_app(Service(manager=manager, keys=keys)), host, port, tls)


def engine(settings: Settings) -> SandboxManager:
    """The daemon's engine, with logging set up and the host's limits lifted (not started yet)."""
    setup_logging()
    memory_report.install()
    log.info("open files limit: %d", raise_open_files_limit())
    manager = SandboxManager(settings)
    log.info("acceleration: %s (%s)", manager.acceleration.kind, manager.acceleration.reason)
    log.info("sandbox protections: %s", manager.driver.protections())
    return manager


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run(app: Any, host: str, port: int, tls: tuple[str, str] | None = None) -> None:
    """Serve ``app`` on uvicorn until SIGINT/SIGTERM; HTTPS with ``tls`` (certificate, key)."""
    certificate, key = tls or (None, None)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        ws="websockets",
        timeout_graceful_shutdown=10,
        ssl_certfile=certificate,
        ssl_keyfile=key,
    )
