"""Turning the daemon's error answers into the typed exceptions of ``ember.errors``.

Every non-2xx body ``{"code", "message"}`` and every NDJSON ``{"type": "error"}`` line
becomes ``error_for(code, message)``, so callers catch the same classes whether an
error came from the engine, the guest or the HTTP layer. A body without a code (a
proxy's page in front of the daemon) becomes the error of its status where one
status means one code (401 ``unauthorized``, 404 ``not_found``, ...), and ``HttpError``
with that status otherwise.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from ember import errors
from ember.errors import EmberError, error_for
from ember.protocol.codes import ErrorCode

_BY_STATUS: dict[int, type[EmberError]] = {
    400: errors.InvalidRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.RouteNotFoundError,
    405: errors.MethodNotAllowedError,
    413: errors.PayloadTooLargeError,
}


class DaemonUnreachableError(EmberError, builtins.ConnectionError):
    """No Ember daemon answered at the configured URL (nothing listening, or the connection broke)."""

    code = ErrorCode.DAEMON_UNREACHABLE.value
    status = 503


def unreachable(base_url: str, detail: str) -> DaemonUnreachableError:
    return DaemonUnreachableError(
        f"no Ember daemon is reachable at {base_url} ({detail}); start one with `ember serve` "
        "or point EMBER_URL at a running daemon"
    )


def error_from_response(status: int, body: bytes, reason: str = "", keyless: bool = False) -> EmberError:
    """The exception for an HTTP error answer (``keyless``: the request carried no API key)."""
    error = _error_of_answer(status, body, reason)
    if keyless and isinstance(error, errors.AuthenticationError):
        error.message += " (no API key configured: set EMBER_API_KEY or pass api_key=)"
    return error


def _error_of_answer(status: int, body: bytes, reason: str) -> EmberError:
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        details = data.get("details")
        return error_for(
            data["code"],
            str(data.get("message") or reason or data["code"]),
            details if isinstance(details, dict) else None,
        )
    if isinstance(data, dict) and "detail" in data:
        message = json.dumps(data["detail"]) if not isinstance(data["detail"], str) else data["detail"]
    else:
        message = body.decode("utf-8", "replace").strip()[:500] or reason or f"HTTP {status}"
    cls = _BY_STATUS.get(status)
    return cls(message) if cls is not None else errors.HttpError(message, status=status)


def error_from_event(event: dict[str, Any]) -> EmberError:
    """The exception for an NDJSON ``{"type": "error", "code", "message"}`` line."""
    code = event.get("code")
    message = event.get("message")
    return error_for(
        code if isinstance(code, str) else ErrorCode.INTERNAL_ERROR.value,
        message if isinstance(message, str) else "the daemon reported an error without a message",
    )
