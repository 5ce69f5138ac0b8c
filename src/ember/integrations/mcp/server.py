"""The Ember MCP server: the tools on an ``MCPServer``, served over stdio or streamable HTTP."""

from __future__ import annotations

from importlib.metadata import version
from typing import Literal

from mcp.server.mcpserver import MCPServer

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


def build_server(sandboxes: SandboxRegistry) -> MCPServer:
    """An MCP server whose tools work on the sandboxes `sandboxes` holds."""
    server = MCPServer("ember", instructions=INSTRUCTIONS, version=version("ember"), log_level="WARNING")
    for tool, hints in SandboxTools(sandboxes).catalogue():
        server.add_tool(tool, annotations=hints)  # type: ignore[arg-type]
    return server


async def serve(
    transport: Transport = "stdio",
    host: str = "127.0.0.1",
    port: int = 7080,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
) -> None:
    """Serve until the client hangs up (stdio) or the process is stopped (HTTP), then kill our sandboxes."""
    async with SandboxRegistry(api_key=api_key, base_url=base_url) as sandboxes:
        server = build_server(sandboxes)
        if transport == "stdio":
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=host, port=port, streamable_http_path=HTTP_PATH)
