"""The Ember MCP server: the tools on an ``MCPServer``, served over stdio or streamable HTTP."""

from __future__ import annotations

from importlib.metadata import version
from typing import Literal

from mcp.server.mcpserver import MCPServer

from ember.integrations.mcp.auth import EmberKeyVerifier, auth_settings
from ember.integrations.mcp.sandboxes import SandboxRegistry
from ember.integrations.mcp.tools import SandboxTools

Transport = Literal["stdio", "http"]
HTTP_PATH = "/mcp"

INSTRUCTIONS = """\
Ember runs code in sandboxes: Linux microVMs with Python 3, Node.js, git and a shell.
Start with create_sandbox and pass its id to the other tools. run_code keeps state
between calls like a notebook; run_command runs shell commands; read_file, write_file
and list_files reach the sandbox's files (relative paths are under /app).
snapshot_sandbox saves a sandbox whole, fork_sandbox copies a running one, and
kill_sandbox ends one when you are done. Sandboxes this server started are killed
when it stops; a snapshot outlives it.
"""


def build_server(sandboxes: SandboxRegistry, *, http_url: str | None = None) -> MCPServer:
    """An MCP server whose tools work on the sandboxes `sandboxes` holds.

    Served over HTTP at `http_url`, each request must carry an Ember API key, and the tools act with it.
    """
    server = MCPServer(
        "ember",
        instructions=INSTRUCTIONS,
        version=version("ember"),
        log_level="WARNING",
        auth=None if http_url is None else auth_settings(sandboxes.base_url, http_url),
        token_verifier=None if http_url is None else EmberKeyVerifier(sandboxes.base_url),
    )
    for tool, hints in SandboxTools(sandboxes, keys_from_callers=http_url is not None).catalogue():
        server.add_tool(tool, annotations=hints)
    return server


async def serve(
    transport: Transport = "stdio",
    host: str = "127.0.0.1",
    port: int = 7080,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
) -> None:
    """Serve until the client hangs up (stdio) or the process is stopped (HTTP), then kill our sandboxes.

    Over HTTP every request must carry ``Authorization: Bearer <Ember API key>``.
    """
    async with SandboxRegistry(api_key=api_key, base_url=base_url) as sandboxes:
        if transport == "stdio":
            await build_server(sandboxes).run_stdio_async()
            return
        url_host = f"[{host}]" if ":" in host else host
        server = build_server(sandboxes, http_url=f"http://{url_host}:{port}{HTTP_PATH}")
        await server.run_streamable_http_async(host=host, port=port, streamable_http_path=HTTP_PATH)
