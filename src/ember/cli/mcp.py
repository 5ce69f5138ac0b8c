"""``ember mcp``: serve Ember's sandboxes to AI agents over the Model Context Protocol."""

from __future__ import annotations

import asyncio
import enum
from typing import Annotated

import typer

from ember.cli._output import stderr


class McpTransport(str, enum.Enum):
    stdio = "stdio"
    http = "http"


def mcp(
    transport: Annotated[
        McpTransport, typer.Option("--transport", help="stdio, or http (streamable HTTP).")
    ] = McpTransport.stdio,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (http).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (http); endpoint /mcp.")] = 7080,
) -> None:
    """Serve the MCP tools (create a sandbox, run code, commands, files, snapshot, fork, kill).

    A client of the Ember daemon like the other commands (EMBER_URL, EMBER_API_KEY).
    Over HTTP each request must carry an Ember API key (Authorization: Bearer KEY),
    and the tools act with it. Sandboxes it started are killed when it stops.
    """
    try:
        from ember.integrations.mcp import serve
    except ImportError as exc:
        stderr.print(f"[red]error: ember mcp needs the mcp extra: pip install 'ember\\[mcp]' ({exc})[/]")
        raise typer.Exit(1) from exc
    asyncio.run(serve(transport.value, host, port))
