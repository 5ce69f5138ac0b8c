"""The daemon as a service: key isolation, concurrency, disconnects, lifetimes, crash and restart."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from e2e_support import Daemon, SandboxFactory, free_port, spawn_daemon, stop_process, wait_until

from ember import Sandbox, SandboxNotFoundError
from ember.client import Keys
from leaks import qemu_pids_under


def test_one_key_cannot_see_or_touch_another_keys_sandbox(
    daemon: Daemon, sandbox_factory: SandboxFactory
) -> None:
    mine = sandbox_factory()
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        other = keys.create("e2e-other")
    try:
        assert mine.id not in {s.id for s in Sandbox.list(base_url=daemon.url, api_key=other.key)}
        with pytest.raises(SandboxNotFoundError):
            Sandbox.connect(mine.id, base_url=daemon.url, api_key=other.key)
        headers = {"authorization": f"Bearer {other.key}"}
        gone = httpx.delete(f"{daemon.url}/v1/sandboxes/{mine.id}", headers=headers)
        assert gone.status_code == 404 and gone.json()["code"] == "sandbox_not_found"
        assert mine.info().state == "running"
    finally:
        with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
            keys.revoke(other.id)


def test_eight_clients_create_sandboxes_at_once(daemon: Daemon) -> None:
    def cycle(number: int) -> str:
        with Sandbox(vcpus=1, memory_mb=256, timeout=600, base_url=daemon.url, api_key=daemon.api_key) as sb:
            return sb.run_code(f"print({number} * 2)").stdout

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(cycle, range(8)))
    assert outputs == [f"{n * 2}\n" for n in range(8)]
    assert Sandbox.list(base_url=daemon.url, api_key=daemon.api_key) == []


def test_a_client_that_drops_a_stream_leaves_the_process_running(
    daemon: Daemon, sandbox_factory: SandboxFactory
) -> None:
    sandbox = sandbox_factory()
    handle = sandbox.commands.run("for i in $(seq 1 40); do echo tick $i; sleep 0.1; done", background=True)
    headers = {"authorization": f"Bearer {daemon.api_key}"}
    url = f"{daemon.url}/v1/sandboxes/{sandbox.id}/commands/{handle.pid}"
    with httpx.stream("GET", url, params={"stream": "true"}, headers=headers, timeout=30) as response:
        lines = response.iter_lines()
        assert "tick" in next(line for line in lines if "stdout" in line)
    # Gone mid-stream: the process runs on and can be reattached.
    assert any(p.pid == handle.pid and p.running for p in sandbox.commands.list())
    again = sandbox.commands.connect(handle.pid)
    result = again.wait()
    assert result.exit_code == 0 and "tick 40\n" in result.stdout


def test_a_lifetime_ends_the_sandbox_with_reason_timeout(daemon: Daemon) -> None:
    sandbox = Sandbox(vcpus=1, memory_mb=256, timeout=3, base_url=daemon.url, api_key=daemon.api_key)
    try:
        wait_until(lambda: sandbox.info().state != "running", timeout_s=30, what="the lifetime to end")
        info = sandbox.info()
        assert info.state == "stopped" and info.end_reason == "timeout"
        assert info.id in {s.id for s in Sandbox.list(all=True, base_url=daemon.url, api_key=daemon.api_key)}
    finally:
        sandbox.close()


FETCH = (
    "import urllib.request\nprint(urllib.request.urlopen('http://allowed.test/', timeout=20).read().decode())"
)


def _netns_of(sandbox_id: str) -> list[str]:
    return [p.name for p in Path("/run/netns").iterdir() if p.name.endswith(sandbox_id)]


def test_a_daemon_killed_and_restarted_finds_its_sandboxes(daemon: Daemon) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="ember-e2e-restart-"))
    run_dir = Path(tempfile.mkdtemp(prefix="ember-e2e-restart-", dir="/dev/shm"))
    data_dir = scratch / "data"
    data_dir.mkdir()
    (data_dir / "images").symlink_to(os.readlink(daemon.data_dir / "images"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**daemon.cli_env, "EMBER_DATA_DIR": str(data_dir), "EMBER_RUN_DIR": str(run_dir), "EMBER_URL": url}
    own = replace(daemon, url=url, data_dir=data_dir, run_dir=run_dir, log_path=scratch / "log", cli_env=env)
    process = spawn_daemon(own, port)
    try:
        sandbox = Sandbox(
            vcpus=1, memory_mb=256, timeout=600, network="full", base_url=url, api_key=own.api_key
        )
        sandbox.run_code("survivor = 'still here'")
        ticker = sandbox.commands.run("while true; do sleep 1; done", background=True)
        # A second one whose VM dies while no daemon watches: its network is left behind.
        lost = Sandbox(vcpus=1, memory_mb=256, timeout=600, network="full", base_url=url, api_key=own.api_key)
        assert _netns_of(lost.id)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.kill(int((run_dir / lost.id / "qemu.pid").read_text()), signal.SIGKILL)
        process = spawn_daemon(own, port)
        assert not _netns_of(lost.id), "the restarted daemon left a dead sandbox's network behind"
        found = Sandbox.connect(sandbox.id, base_url=url, api_key=own.api_key)
        assert found.info().state == "running"
        assert found.run_code("survivor").results[0].text == "'still here'"
        assert any(p.pid == ticker.pid and p.running for p in found.commands.list())
        # Its network came back with the daemon: DNS and the policy's rules answer again.
        assert found.run_code(FETCH).stdout.startswith("netlab allowed.test")
        found.kill()
        found.close()
        sandbox.close()
        lost.close()
    finally:
        stop_process(process)
        leaked = qemu_pids_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    assert not leaked, f"QEMU processes outlived the daemon: {leaked}"
