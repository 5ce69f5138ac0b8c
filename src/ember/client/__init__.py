"""The Python SDK: sandboxes over the Ember daemon's HTTP API (no engine inside).

``AsyncSandbox`` is written once; ``Sandbox`` is generated from it (see
``scripts/unasync.py``) rather than kept as a hand-written twin, so the two
expose the same calls with the same behaviour, only blocking.

Names are loaded on first use: a program (or an ``ember`` command) that uses the
blocking ``Sandbox`` does not pay for importing the async twin, and the other way round.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.client._async.cluster import AsyncCluster
    from ember.client._async.commands import AsyncCommandHandle
    from ember.client._async.keys import AsyncKeys
    from ember.client._async.pty import AsyncTerminal
    from ember.client._async.sandbox import AsyncSandbox
    from ember.client._async.templates import build_template as async_build_template
    from ember.client._errors import DaemonUnreachableError
    from ember.client._models import (
        CommandResult,
        CreatedKey,
        Execution,
        KeyInfo,
        PoolInfo,
        PortInfo,
        QuotaInfo,
        QuotaUsage,
        Result,
        SandboxInfo,
        SnapshotInfo,
    )
    from ember.client._policy import network_policy
    from ember.client._sync.cluster import Cluster
    from ember.client._sync.commands import CommandHandle
    from ember.client._sync.keys import Keys
    from ember.client._sync.pty import Terminal
    from ember.client._sync.sandbox import Sandbox
    from ember.client._sync.templates import Step, build_template
    from ember.protocol.messages import ContextInfo, ExecutionError, FileInfo, ProcessInfo

#: Public name -> (module, name there).
_WHERE = {
    "AsyncCluster": ("ember.client._async.cluster", "AsyncCluster"),
    "AsyncCommandHandle": ("ember.client._async.commands", "AsyncCommandHandle"),
    "AsyncKeys": ("ember.client._async.keys", "AsyncKeys"),
    "AsyncSandbox": ("ember.client._async.sandbox", "AsyncSandbox"),
    "AsyncTerminal": ("ember.client._async.pty", "AsyncTerminal"),
    "Cluster": ("ember.client._sync.cluster", "Cluster"),
    "CommandHandle": ("ember.client._sync.commands", "CommandHandle"),
    "CommandResult": ("ember.client._models", "CommandResult"),
    "ContextInfo": ("ember.protocol.messages", "ContextInfo"),
    "CreatedKey": ("ember.client._models", "CreatedKey"),
    "DaemonUnreachableError": ("ember.client._errors", "DaemonUnreachableError"),
    "Execution": ("ember.client._models", "Execution"),
    "ExecutionError": ("ember.protocol.messages", "ExecutionError"),
    "FileInfo": ("ember.protocol.messages", "FileInfo"),
    "KeyInfo": ("ember.client._models", "KeyInfo"),
    "Keys": ("ember.client._sync.keys", "Keys"),
    "PoolInfo": ("ember.client._models", "PoolInfo"),
    "PortInfo": ("ember.client._models", "PortInfo"),
    "ProcessInfo": ("ember.protocol.messages", "ProcessInfo"),
    "QuotaInfo": ("ember.client._models", "QuotaInfo"),
    "QuotaUsage": ("ember.client._models", "QuotaUsage"),
    "Result": ("ember.client._models", "Result"),
    "Sandbox": ("ember.client._sync.sandbox", "Sandbox"),
    "SandboxInfo": ("ember.client._models", "SandboxInfo"),
    "SnapshotInfo": ("ember.client._models", "SnapshotInfo"),
    "Step": ("ember.client._sync.templates", "Step"),
    "Terminal": ("ember.client._sync.pty", "Terminal"),
    "async_build_template": ("ember.client._async.templates", "build_template"),
    "build_template": ("ember.client._sync.templates", "build_template"),
    "network_policy": ("ember.client._policy", "network_policy"),
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'ember.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


__all__ = [
    "AsyncCluster",
    "AsyncCommandHandle",
    "AsyncKeys",
    "AsyncSandbox",
    "AsyncTerminal",
    "Cluster",
    "CommandHandle",
    "CommandResult",
    "ContextInfo",
    "CreatedKey",
    "DaemonUnreachableError",
    "Execution",
    "ExecutionError",
    "FileInfo",
    "KeyInfo",
    "Keys",
    "PoolInfo",
    "PortInfo",
    "ProcessInfo",
    "QuotaInfo",
    "QuotaUsage",
    "Result",
    "Sandbox",
    "SandboxInfo",
    "SnapshotInfo",
    "Step",
    "Terminal",
    "async_build_template",
    "build_template",
    "network_policy",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
