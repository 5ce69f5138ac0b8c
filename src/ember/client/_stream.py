"""NDJSON streams (``?stream=true``): one JSON object per line, ending with a result or an error.

No I/O here: the transport feeds lines in and hands the text to callbacks. The
streamed text is kept, because the final result line of a command carries no
output of its own (it was streamed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ember.client._errors import error_from_event
from ember.errors import ProtocolError


def parse_line(line: str) -> dict[str, Any] | None:
    """One stream line as an event; None for a blank line; an error line raises its exception."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"malformed line in the daemon's stream: {line[:200]!r}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError(f"stream line without a 'type': {line[:200]!r}")
    if event["type"] == "error":
        raise error_from_event(event)
    return event


@dataclass
class StreamedOutput:
    """The text a stream delivered so far, per channel."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> str | None:
        """Keep a stdout/stderr event's text and return it; None for other events."""
        if event["type"] not in ("stdout", "stderr"):
            return None
        text = event.get("text")
        if not isinstance(text, str):
            raise ProtocolError(f"{event['type']} line without text")
        (self.stdout if event["type"] == "stdout" else self.stderr).append(text)
        return text

    def fill(self, result: dict[str, Any]) -> dict[str, Any]:
        """The result object with the streamed text in place of empty stdout/stderr."""
        return {
            **result,
            "stdout": result.get("stdout") or "".join(self.stdout),
            "stderr": result.get("stderr") or "".join(self.stderr),
        }


def result_of(event: dict[str, Any], key: str) -> dict[str, Any]:
    """The object a ``result`` line carries under `key` (``execution``, ``command``)."""
    value = event.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"result line without {key!r}")
    return value


def ended_without_result(method: str, path: str) -> ProtocolError:
    """The error for a stream that stopped before its result line: the daemon went away, most
    often, so say where to look."""
    return ProtocolError(
        f"{method} {path}: the daemon's stream ended without a result (if the daemon stopped, its "
        "log says why; a sandbox that outlived it is still there: ember ls)"
    )
