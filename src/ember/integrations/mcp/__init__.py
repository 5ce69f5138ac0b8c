"""An MCP server over Ember: agents reach sandboxes through the Model Context Protocol.

``ember mcp`` runs it over stdio or streamable HTTP; it is a client of the Ember
daemon (``EMBER_URL`` / ``EMBER_API_KEY``, or the local daemon the SDK starts).
Needs the ``mcp`` extra: ``pip install 'ember[mcp]'``.
"""

from ember.integrations.mcp.sandboxes import SandboxRegistry
from ember.integrations.mcp.server import build_server, serve

__all__ = ["SandboxRegistry", "build_server", "serve"]
