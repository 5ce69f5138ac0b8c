"""A local daemon started on first use, so that a newcomer's first sandbox is one command.

When no URL was configured and nothing answers on the default address, the SDK
(and so the CLI) starts ``python -m ember serve`` in its own session, logging to
``<data_dir>/daemon.log``, with a fresh random ``EMBER_API_KEY`` that the daemon
registers as an admin key. The key is saved in the user's credentials file for
later clients. A file lock makes concurrent first uses start one daemon, not two.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ember.client._credentials import credentials_path, load_key, new_key, save_key
from ember.client._errors import DaemonUnreachableError
from ember.settings import Settings

STARTUP_TIMEOUT_S = 30.0
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def ensure_local_daemon(base_url: str, api_key: str | None) -> str | None:
    """Start a daemon at the loopback `base_url` unless one answers there; return the key to use."""
    host, port = _loopback_address(base_url)
    with _startup_lock():
        if is_healthy(base_url):
            # Another process started it meanwhile: it saved the key before starting it.
            return api_key or load_key(base_url)
        key = api_key or new_key()
        if api_key is None:
            save_key(base_url, key)
        log_path = Settings.from_env().data_dir / "daemon.log"
        daemon_pid = _spawn(host, port, key, log_path)
        _wait_until_healthy(base_url, daemon_pid, log_path)
    return key


def is_healthy(base_url: str, timeout_s: float = 1.0) -> bool:
    """True when an Ember daemon answers ``GET /health`` at `base_url`."""
    try:
        response = httpx.get(f"{base_url}/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _loopback_address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS:
        raise DaemonUnreachableError(f"cannot start a local daemon for {base_url}: not a loopback http URL")
    return parts.hostname, parts.port or 80


@contextmanager
def _startup_lock() -> Iterator[None]:
    path = credentials_path().with_name("daemon-start.lock")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _spawn(host: str, port: int, api_key: str, log_path: Path) -> int:
    """Start the daemon in its own session, so it outlives this program and ignores its Ctrl-C.

    posix_spawn rather than subprocess: a Popen object would warn when collected
    while the daemon (meant to stay) still runs. If the daemon dies while this
    program lives on, it stays a zombie until this program exits.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ember", "serve", "--host", host, "--port", str(port)]
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- {stamp} started by the SDK: {' '.join(command)}\n".encode())
        log.flush()
        return os.posix_spawn(
            sys.executable,
            command,
            {**os.environ, "EMBER_API_KEY": api_key},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
            ],
            setsid=True,
        )


def _wait_until_healthy(base_url: str, daemon_pid: int, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not is_healthy(base_url, timeout_s=0.5):
        exited_pid, status = os.waitpid(daemon_pid, os.WNOHANG)
        if exited_pid:
            raise DaemonUnreachableError(
                f"the local Ember daemon exited with status {os.waitstatus_to_exitcode(status)} while "
                f"starting; see {log_path}:\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise DaemonUnreachableError(
                f"the local Ember daemon (pid {daemon_pid}) did not answer at {base_url} within "
                f"{STARTUP_TIMEOUT_S:.0f} s; see {log_path}"
            )
        time.sleep(0.2)


def _tail(path: Path, size_bytes: int = 2000) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - size_bytes))
            return log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(could not read it: {exc})"
