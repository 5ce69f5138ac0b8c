"""``ember serve``: run the daemon in the foreground."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ember.cli._output import stderr
from ember.client._credentials import credentials_path, load_key, new_key, save_key
from ember.settings import Settings

_ANY_ADDRESS = {"0.0.0.0", "::", "127.0.0.1", "localhost"}


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7070,
) -> None:
    """Run the Ember daemon (HTTP API + engine) until interrupted.

    Without EMBER_API_KEY, the admin key saved for this address in the credentials
    file is used (a new one is made and saved the first time), so that the SDK and
    the CLI on this machine find it without configuration.
    """
    # Imported here: the server pulls in the engine and FastAPI, which no other command needs.
    from ember.server import serve as run_server

    if not os.environ.get("EMBER_API_KEY"):
        client_host = "127.0.0.1" if host in _ANY_ADDRESS else f"[{host}]" if ":" in host else host
        url = f"http://{client_host}:{port}"
        key = load_key(url)
        if key is None:
            key = new_key()
            save_key(url, key)
            stderr.print(f"new admin API key for {url} saved in {credentials_path()}")
        os.environ["EMBER_API_KEY"] = key
    run_server(host, port, Settings.from_env())
