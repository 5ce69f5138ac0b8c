"""The bounds of a sandbox's shape: the engine checks them, the API, the SDK's callers and the
MCP tools state them. Here, below all of them, so that none imports the VMM's package for
three pairs of numbers."""

from __future__ import annotations

MIN_VCPUS, MAX_VCPUS = 1, 8
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 128, 8192
MIN_DISK_MIB, MAX_DISK_MIB = 256, 1024 * 1024
