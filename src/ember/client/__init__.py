"""The Python SDK: sandboxes over the Ember daemon's HTTP API (no engine inside).

``AsyncSandbox`` is written once; ``Sandbox`` is generated from it (see
``scripts/unasync.py``) rather than kept as a hand-written twin, so the two
expose the same calls with the same behaviour, only blocking.
"""

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
    ImageInfo,
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
from ember.client._sync.commands import CommandHandle
from ember.client._sync.keys import Keys
from ember.client._sync.pty import Terminal
from ember.client._sync.sandbox import Sandbox
from ember.client._sync.templates import Step, build_template
from ember.protocol.messages import ContextInfo, ExecutionError, FileInfo, ProcessInfo

__all__ = [
    "AsyncCommandHandle",
    "AsyncKeys",
    "AsyncSandbox",
    "AsyncTerminal",
    "CommandHandle",
    "CommandResult",
    "ContextInfo",
    "CreatedKey",
    "DaemonUnreachableError",
    "Execution",
    "ExecutionError",
    "FileInfo",
    "ImageInfo",
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
