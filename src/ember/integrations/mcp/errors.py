"""Ember errors as MCP tool errors: the stable code, the message, and what the model can do next.

A tool error (``isError`` in the result) reaches the model, which can act on it;
a protocol error would only reach the client program. So every ``EmberError`` a
tool meets becomes a ``ToolError`` whose text names the code and the next step.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from mcp.server.mcpserver.exceptions import ToolError

from ember.errors import EmberError

P = ParamSpec("P")
R = TypeVar("R")

_START_ANEW = "It has ended: start a new one with create_sandbox (from a snapshot to resume saved state)."
_NEXT_STEP = {
    "sandbox_not_found": "Create a sandbox with create_sandbox, or call list_sandboxes for the running ones.",
    "sandbox_not_running": _START_ANEW,
    "sandbox_dead": _START_ANEW,
    "template_not_found": "Call list_snapshots for the templates and snapshots there are.",
    "snapshot_not_found": "Call list_snapshots for the templates and snapshots there are.",
    "file_not_found": "Check the path with list_files (relative paths are under /app).",
    "not_a_directory": "Check the path with list_files.",
    "is_a_directory": "That is a directory: call list_files on it.",
    "exec_timeout": "Give a larger timeout, or split the work into shorter steps.",
    "resource_exhausted": "Kill sandboxes you no longer need (list_sandboxes, kill_sandbox) or ask for less.",
    "disk_full": "Free space in the sandbox, or create one with a larger disk_mb.",
    "invalid_request": "Correct the arguments and call again.",
    "permission_denied": "That is not allowed with this server's API key.",
    "unauthorized": "The server's EMBER_API_KEY is missing or wrong; the user must fix its configuration.",
}


def tool_error(error: EmberError) -> ToolError:
    """The tool error for `error`: ``<message> [<code>]`` and, where there is one, the next step."""
    next_step = _NEXT_STEP.get(error.code)
    return ToolError(f"{error.message} [{error.code}]" + (f" {next_step}" if next_step else ""))


def reports_ember_errors(tool: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a tool so that the Ember errors it raises reach the model as tool errors."""

    @functools.wraps(tool)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await tool(*args, **kwargs)
        except EmberError as exc:
            raise tool_error(exc) from exc

    return wrapper
