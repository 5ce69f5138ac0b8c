"""A newcomer's first sandbox is one command: with nothing configured, the CLI starts a daemon.

This test uses the default address (127.0.0.1:7070), so it is skipped when a daemon
already answers there. Everything else is private to the test: config dir (the
credentials file), data dir and run dir. The daemon it starts is found by its
environment and stopped at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.client._config import DEFAULT_URL
from ember.client._local import is_healthy
from ember.settings import Settings
from leaks import qemu_pids_under


def _daemons_with(marker: str) -> list[int]:
    """Pids of `ember serve` processes whose environment contains `marker` (our data dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and marker.encode() in environ:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def newcomer_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    if is_healthy(DEFAULT_URL):
        pytest.skip(f"a daemon already answers at {DEFAULT_URL}")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "images").symlink_to(Settings.from_env().images_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="ember-auto-", dir="/dev/shm"))
    env = {key: value for key, value in os.environ.items() if key not in ("EMBER_URL", "EMBER_API_KEY")}
    env.update(EMBER_DATA_DIR=str(data_dir), EMBER_RUN_DIR=str(run_dir))
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    yield env
    marker = f"EMBER_DATA_DIR={data_dir}"
    for pid in _daemons_with(marker):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _daemons_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _daemons_with(marker):
        os.kill(pid, signal.SIGKILL)
    leaked = qemu_pids_under(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    assert not leaked, f"QEMU processes outlived the auto-started daemon: {leaked}"


def test_first_command_starts_a_local_daemon_and_saves_its_key(newcomer_env: dict[str, str]) -> None:
    def ember(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ember", *args]
        return subprocess.run(command, env=newcomer_env, capture_output=True, text=True, timeout=180)

    first = ember("execute", "-c", "print('first sandbox')")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "first sandbox\n"

    credentials = Path(newcomer_env["XDG_CONFIG_HOME"]) / "ember" / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert DEFAULT_URL in credentials.read_text()
    assert (Path(newcomer_env["EMBER_DATA_DIR"]) / "daemon.log").exists()

    again = ember("ls")
    assert again.returncode == 0, again.stderr
    assert len(_daemons_with(f"EMBER_DATA_DIR={newcomer_env['EMBER_DATA_DIR']}")) == 1
