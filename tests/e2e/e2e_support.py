"""Helpers shared by the end-to-end tests and their conftest."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ember.client import AsyncSandbox, Sandbox
from ember.client._local import is_healthy

DAEMON_START_TIMEOUT_S = 60.0
#: The test daemon also serves exposed ports as {port}-{id}.PORTS_DOMAIN (host-based URLs).
PORTS_DOMAIN = "sandbox.test"
#: The registries the test daemon's pip, npm and Debian mirror configuration name: test hosts.
PACKAGE_INDEX = "http://pypi.wild.test/simple"
NPM_REGISTRY = "http://npm.wild.test/"
DEBIAN_MIRROR = "http://deb.wild.test/debian"
#: The daemon reads its host's registries from pip's and npm's configuration and the guest's
#: Debian mirror from Ember's: the test daemon's environment says so (and nothing else's:
#: the recipes' own apt and pip use this machine's real ones).
DAEMON_REGISTRIES = {
    "PIP_INDEX_URL": PACKAGE_INDEX,
    "PIP_TRUSTED_HOST": urlsplit(PACKAGE_INDEX).netloc,  # plain http, as pip wants it said
    "npm_config_registry": NPM_REGISTRY,
    "EMBER_DEBIAN_MIRROR": DEBIAN_MIRROR,
}

SandboxFactory = Callable[..., Sandbox]
AsyncSandboxFactory = Callable[..., Awaitable[AsyncSandbox]]


@dataclass(frozen=True)
class Daemon:
    url: str
    api_key: str
    data_dir: Path
    run_dir: Path
    log_path: Path
    #: Environment for CLI subprocesses: this daemon, this key, a private config dir.
    cli_env: dict[str, str]

    def log_tail(self, size_bytes: int = 6000) -> str:
        data = self.log_path.read_bytes()
        return data[-size_bytes:].decode("utf-8", "replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (the daemon ends its sandboxes and exits), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_cli(
    daemon: Daemon, *args: str, timeout_s: float = 180.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ember ARGS...`` as a user runs it, against the test daemon (`env` overrides its environment)."""
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        env={**daemon.cli_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def spawn_daemon(daemon: Daemon, port: int) -> subprocess.Popen[bytes]:
    """Start ``ember serve`` for `daemon` (its dirs, key and port) and wait until it answers."""
    env = {**{k: v for k, v in daemon.cli_env.items() if k != "EMBER_URL"}, **DAEMON_REGISTRIES}
    with open(daemon.log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while not is_healthy(daemon.url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise AssertionError(f"ember serve did not come up; its log:\n{daemon.log_tail()}")
        time.sleep(0.2)
    return process
