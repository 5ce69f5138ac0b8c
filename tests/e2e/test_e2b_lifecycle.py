"""E2B's SDKs against Ember: terminals, pause and resume, fork, lifetimes."""

from __future__ import annotations

import time

import pytest
from e2b import PtySize, SandboxState
from e2b.exceptions import NotFoundException, SandboxException
from e2b_code_interpreter import Sandbox


def test_pty_takes_input_and_resizes(e2b_env: None) -> None:
    with Sandbox.create(timeout=600) as sandbox:
        terminal = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=120)
        sandbox.pty.send_stdin(terminal.pid, b"stty size; stty size > /tmp/first\n")
        deadline = time.monotonic() + 60
        while not sandbox.files.exists("/tmp/first"):  # the shell has read the first line
            assert time.monotonic() < deadline, "the terminal did not run the first command"
            time.sleep(0.2)
        sandbox.pty.resize(terminal.pid, PtySize(rows=40, cols=100))
        sandbox.pty.send_stdin(terminal.pid, b"stty size; exit\n")
        output = bytearray()
        result = terminal.wait(on_pty=output.extend)
        assert result.exit_code == 0
        text = output.decode(errors="replace")
        assert "24 80" in text and "40 100" in text, text


def test_pause_at_timeout_and_explicit_pause_resume_under_the_same_id(e2b_env: None) -> None:
    sandbox = Sandbox.create(timeout=600, metadata={"kind": "paused"}, lifecycle={"on_timeout": "pause"})
    try:
        sandbox.run_code("kept = 'still here'")
        sandbox.set_timeout(2)  # its lifetime ends: it pauses instead of ending
        deadline = time.monotonic() + 60
        while Sandbox.get_info(sandbox.sandbox_id).state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "the sandbox did not pause at its timeout"
            time.sleep(0.5)
        assert not sandbox.pause()  # already paused
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        assert resumed.sandbox_id == sandbox.sandbox_id
        assert resumed.run_code("kept").text == "'still here'"
        resumed.run_code("kept += ', twice'")
        assert resumed.pause()
        again = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        assert again.run_code("kept").text == "'still here, twice'"
        info = again.get_info()
        assert info.state == SandboxState.RUNNING and info.metadata == {"kind": "paused"}
    finally:
        Sandbox.kill(sandbox.sandbox_id)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)


def test_fork_copies_state_with_distinct_entropy(e2b_env: None) -> None:
    with Sandbox.create(timeout=600) as sandbox:
        sandbox.run_code("import os\nshared = 'from the parent'")
        forks = sandbox.fork(count=2)
        try:
            assert all(isinstance(fork, Sandbox) for fork in forks), forks
            assert len({sandbox.sandbox_id, *(fork.sandbox_id for fork in forks)}) == 3
            for fork in forks:
                assert fork.run_code("shared").text == "'from the parent'"
            draws = {fork.run_code("os.urandom(16).hex()").text for fork in [sandbox, *forks]}
            assert len(draws) == 3
            snapshot = sandbox.create_snapshot(name="forked")
            assert snapshot.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots().next_items()]
            with Sandbox.create(template=snapshot.snapshot_id, timeout=600) as restored:
                assert restored.run_code("shared").text == "'from the parent'"
            assert Sandbox.delete_snapshot(snapshot.snapshot_id)
            assert not Sandbox.delete_snapshot(snapshot.snapshot_id)
            with pytest.raises(SandboxException, match="not supported"):
                sandbox.get_metrics()
        finally:
            for fork in forks:
                if isinstance(fork, Sandbox):
                    fork.kill()


def test_set_timeout_ends_the_sandbox(e2b_env: None) -> None:
    sandbox = Sandbox.create(timeout=600)
    try:
        sandbox.set_timeout(2)
        deadline = time.monotonic() + 60
        while sandbox.is_running():
            assert time.monotonic() < deadline, "the sandbox outlived its timeout"
            time.sleep(0.5)
        with pytest.raises(NotFoundException):
            Sandbox.get_info(sandbox.sandbox_id)
    finally:
        Sandbox.kill(sandbox.sandbox_id)
