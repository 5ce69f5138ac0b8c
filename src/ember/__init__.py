"""Ember: self-hosted microVM sandboxes for running untrusted code.

``from ember import Sandbox`` (or ``AsyncSandbox``) is the SDK; the error classes
below are what its calls raise. The SDK is loaded on first use, so that
``import ember`` stays light for the CLI and for code that only needs the errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ember.errors import (
    AuthenticationError,
    ConflictError,
    ContextNotFoundError,
    EmberError,
    ExecTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PathNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProcessNotFoundError,
    QuotaExceededError,
    ResourceExhaustedError,
    SandboxDeadError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    ServerError,
)

if TYPE_CHECKING:
    from ember.client import AsyncSandbox, DaemonUnreachableError, Sandbox

_FROM_CLIENT = ("AsyncSandbox", "DaemonUnreachableError", "Sandbox")


def __getattr__(name: str) -> Any:
    if name in _FROM_CLIENT:
        import ember.client

        return getattr(ember.client, name)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")


__all__ = [
    "AsyncSandbox",
    "AuthenticationError",
    "ConflictError",
    "ContextNotFoundError",
    "DaemonUnreachableError",
    "EmberError",
    "ExecTimeoutError",
    "InvalidRequestError",
    "NotFoundError",
    "PathNotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessNotFoundError",
    "QuotaExceededError",
    "ResourceExhaustedError",
    "Sandbox",
    "SandboxDeadError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "ServerError",
]
