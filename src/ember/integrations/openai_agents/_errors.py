"""Ember's errors as the OpenAI Agents SDK's own, so its tools and retries see what they expect.

A command that ran and failed is a result (its exit code), never an error. A
command that ran out of time is ``ExecTimeoutError``; one that Ember could not run
or reach (daemon gone, sandbox ended, guest agent down) is ``ExecTransportError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from agents.sandbox.errors import ExecTimeoutError, ExecTransportError

from ember import errors
from ember.client import DaemonUnreachableError

#: Failures worth one more try: the daemon or the guest agent was briefly unreachable.
_RETRYABLE = (errors.AgentUnavailableError, DaemonUnreachableError)


def raise_exec_error(
    error: errors.EmberError, *, command: Sequence[str | Path], timeout_s: float | None
) -> NoReturn:
    """Raise the SDK's exec error for an Ember error met while running `command`."""
    if isinstance(error, errors.ExecTimeoutError):
        raise ExecTimeoutError(command=command, timeout_s=timeout_s, cause=error) from error
    raise ExecTransportError(
        command=command,
        context={"backend": "ember", "code": error.code, "detail": error.message},
        cause=error,
        retryable=isinstance(error, _RETRYABLE),
    ) from error
