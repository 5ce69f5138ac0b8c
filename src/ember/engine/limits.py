"""Checking a request against the rules and against this host.

Everything is checked before any VM exists, so bad input creates nothing: a
vCPU count outside 1-8 or beyond the host's CPUs, memory outside 128-8192 MiB or
beyond what the host has available, malformed environment variables, lifetimes
outside 1 s to 30 days, fork counts, template names, what a timeout does.
"""

from __future__ import annotations

import os
import re

from ember.engine.sandbox import SandboxConfig
from ember.errors import InvalidRequestError, ResourceExhaustedError
from ember.protocol.bounds import (
    MAX_DISK_MIB,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_DISK_MIB,
    MIN_MEMORY_MIB,
    MIN_VCPUS,
)

MAX_LIFETIME_S = 30 * 24 * 3600
MAX_FORKS = 16
#: What a sandbox's lifetime's end does: "kill" ends it, "pause" pauses it.
ON_TIMEOUT = ("kill", "pause")
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_ENV_ENTRIES = 1000
MAX_ENV_BYTES = 256 * 1024
MAX_METADATA_ENTRIES = 64
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Host memory kept free for QEMU's own overhead and the host itself.
_HOST_RESERVE_MIB = 256


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def available_memory_mib() -> int:
    return _meminfo_mib("MemAvailable")


def total_memory_mib() -> int:
    return _meminfo_mib("MemTotal")


def _meminfo_mib(name: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) // 1024
    return 0


def free_memory_mib() -> int:
    """Memory a new sandbox can still have on this host (what ``validate`` allows)."""
    return available_memory_mib() - _HOST_RESERVE_MIB


def validate(config: SandboxConfig) -> SandboxConfig:
    """Return the config if the host can run it; raise a 4xx-class error otherwise."""
    if not _is_int(config.vcpus) or not MIN_VCPUS <= config.vcpus <= MAX_VCPUS:
        raise InvalidRequestError(f"vcpus must be an integer from {MIN_VCPUS} to {MAX_VCPUS}")
    host_cpus = os.cpu_count() or 1
    if config.vcpus > host_cpus:
        raise InvalidRequestError(f"vcpus={config.vcpus} but this host has only {host_cpus} CPUs")
    if not _is_int(config.memory_mib) or not MIN_MEMORY_MIB <= config.memory_mib <= MAX_MEMORY_MIB:
        raise InvalidRequestError(f"memory_mb must be an integer from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}")
    if not _is_int(config.disk_mib) or not MIN_DISK_MIB <= config.disk_mib <= MAX_DISK_MIB:
        raise InvalidRequestError(f"disk_mb must be an integer from {MIN_DISK_MIB} to {MAX_DISK_MIB}")
    free = free_memory_mib()
    if config.memory_mib > free:
        raise ResourceExhaustedError(
            f"memory_mb={config.memory_mib} but this host has only {max(free, 0)} MiB available; "
            "ask for less or end other sandboxes"
        )
    _check_strings("env", config.env, MAX_ENV_ENTRIES, names=True)
    check_metadata(config.metadata)
    return config


def check_metadata(metadata: object) -> None:
    _check_strings("metadata", metadata, MAX_METADATA_ENTRIES, names=False)


def _check_strings(what: str, values: object, max_entries: int, names: bool) -> None:
    if not isinstance(values, dict):
        raise InvalidRequestError(f"{what} must be an object of strings")
    if len(values) > max_entries:
        raise InvalidRequestError(f"{what} has more than {max_entries} entries")
    size = 0
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequestError(f"{what} keys and values must be strings")
        if "\0" in key or "\0" in value:
            raise InvalidRequestError(f"{what} entries must not contain NUL bytes")
        if names and not _ENV_NAME.match(key):
            raise InvalidRequestError(f"{key!r} is not a valid environment variable name")
        size += len(key) + len(value)
    if size > MAX_ENV_BYTES:
        raise InvalidRequestError(f"{what} is larger than {MAX_ENV_BYTES} bytes")


def check_duration(name: str, value: float | None) -> None:
    """A lifetime or idle time: None (no limit) or 1 s to 30 days."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_LIFETIME_S:
        raise InvalidRequestError(f"{name} must be a number of seconds above 0, at most {MAX_LIFETIME_S}")


def check_fork_count(count: object) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
        raise InvalidRequestError(f"a fork makes 1 to {MAX_FORKS} sandboxes")


def check_template_name(name: object) -> None:
    if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name):
        raise InvalidRequestError(
            "a template name is 1-63 lowercase letters, digits, '.', '_' or '-', starting alphanumeric"
        )


def check_on_timeout(on_timeout: object) -> None:
    if on_timeout not in ON_TIMEOUT:
        raise InvalidRequestError(f"on_timeout is one of {', '.join(ON_TIMEOUT)}")
