"""``ember serve``: run the daemon in the foreground."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ember.cli._output import stderr
from ember.client._credentials import credentials_path, load_key, new_key, save_key
from ember.settings import Settings

_ANY_ADDRESS = {"0.0.0.0", "::", "127.0.0.1", "localhost"}


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7070,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            envvar="EMBER_CLUSTER",
            metavar="ENDPOINTS",
            help="Join the cluster of these etcd endpoints (comma-separated).",
        ),
    ] = None,
    gateway: Annotated[
        bool,
        typer.Option("--gateway", help="With --cluster: run no VMs, answer the cluster's API and proxy."),
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="This member's name in the cluster.")] = None,
    advertise: Annotated[
        str | None, typer.Option("--advertise", metavar="URL", help="Where the other members reach this one.")
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", envvar="EMBER_TLS_CERT", help="Serve HTTPS with this certificate (PEM)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", envvar="EMBER_TLS_KEY", help="...and this private key (PEM).")
    ] = None,
) -> None:
    """Run the Ember daemon (HTTP API + engine) until interrupted; with --cluster, as a member of a cluster.

    Without EMBER_API_KEY, the admin key saved for this address in the credentials
    file is used (a new one is made and saved the first time), so that the SDK and
    the CLI on this machine find it without configuration.
    """
    # Imported here: the server pulls in the engine and FastAPI, which no other command needs.
    from ember.server import serve as run_server

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("HTTPS needs both --tls-cert and --tls-key")
    tls = (str(tls_cert), str(tls_key)) if tls_cert and tls_key else None
    scheme = "https" if tls else "http"
    if not os.environ.get("EMBER_API_KEY"):
        client_host = "127.0.0.1" if host in _ANY_ADDRESS else f"[{host}]" if ":" in host else host
        url = f"{scheme}://{client_host}:{port}"
        key = load_key(url)
        if key is None:
            key = new_key()
            save_key(url, key)
            stderr.print(f"new admin API key for {url} saved in {credentials_path()}")
        os.environ["EMBER_API_KEY"] = key
    if cluster is None:
        if gateway:
            raise typer.BadParameter("--gateway needs --cluster ENDPOINTS")
        run_server(host, port, Settings.from_env(), tls)
        return
    from ember.cluster import ClusterSettings, serve_gateway, serve_host

    if name:
        os.environ["EMBER_CLUSTER_NAME"] = name
    if advertise is None and host in _ANY_ADDRESS - {"127.0.0.1", "localhost"}:
        raise typer.BadParameter(
            f"--host {host} listens everywhere: say where the others reach it (--advertise URL)"
        )
    url = advertise or f"{scheme}://{host}:{port}"
    settings = ClusterSettings.from_env(cluster, url, role="gateway" if gateway else "host")
    (serve_gateway if gateway else serve_host)(host, port, Settings.from_env(), settings, tls)
