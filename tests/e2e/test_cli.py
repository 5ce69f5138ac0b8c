"""The ``ember`` command line against a real daemon, run as a user runs it (a subprocess)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from e2e_support import Daemon, SandboxFactory, run_cli

from ember import Sandbox


def test_execute_prints_the_output_and_exits_zero(daemon: Daemon) -> None:
    done = run_cli(daemon, "execute", "--code", "import sys; print(sys.version)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3.")
    assert Sandbox.list(base_url=daemon.url, api_key=daemon.api_key) == [], "execute left its sandbox"


def test_failing_code_prints_the_traceback_and_exits_one(daemon: Daemon) -> None:
    done = run_cli(daemon, "execute", "-c", "print('before'); 1/0")
    assert done.returncode == 1
    assert done.stdout == "before\n"
    assert "ZeroDivisionError" in done.stderr and "Traceback" not in done.stdout


def test_execute_cut_short_kills_its_sandbox(daemon: Daemon) -> None:
    """SIGTERM in the middle of a cell (its response still streaming) ends the command with
    130, and the sandbox it made is killed on the way out, not left to its lifetime."""
    command = [
        sys.executable,
        "-m",
        "ember",
        "execute",
        "-c",
        "print('started', flush=True); import time; time.sleep(120)",
    ]
    with subprocess.Popen(
        command, env=daemon.cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as cli:
        assert cli.stdout is not None
        assert cli.stdout.readline() == "started\n"
        assert len(Sandbox.list(base_url=daemon.url, api_key=daemon.api_key)) == 1
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 130, cli.stderr.read() if cli.stderr else ""
    assert Sandbox.list(base_url=daemon.url, api_key=daemon.api_key) == [], (
        "the cut-short run left its sandbox"
    )


def test_sys_exit_in_the_cell_is_the_commands_exit_status(
    daemon: Daemon, sandbox_factory: SandboxFactory
) -> None:
    sandbox = sandbox_factory()
    for code, status, printed in [
        ("import sys; print('out'); sys.exit(3)", 3, ""),
        ("import sys; sys.exit()", 0, ""),
        ("raise SystemExit('bad input')", 1, "bad input\n"),
    ]:
        done = run_cli(daemon, "execute", "-c", code, "--sandbox", sandbox.id)
        assert (done.returncode, done.stderr) == (status, printed), (code, done.stderr)
    assert done.stdout == ""


def test_run_file_in_an_existing_sandbox(
    daemon: Daemon, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    sandbox = sandbox_factory()
    script = tmp_path / "job.sh"
    script.write_text("echo from-file $(hostname)\nexit 0\n")
    done = run_cli(daemon, "run", str(script), "--sandbox", sandbox.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("from-file ember-")
    assert sandbox.info().state == "running", "a sandbox named with --sandbox must be left running"


def test_ls_upload_download_and_kill(daemon: Daemon, sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    sandbox = sandbox_factory()
    listed = run_cli(daemon, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sandbox.id in {entry["id"] for entry in json.loads(listed.stdout)}
    table = run_cli(daemon, "ls")
    assert sandbox.id in table.stdout and "running" in table.stdout

    local = tmp_path / "up.txt"
    local.write_text("uploaded by the cli\n")
    up = run_cli(daemon, "upload", str(local), f"{sandbox.id}:/app/up.txt")
    assert up.returncode == 0, up.stderr
    assert sandbox.files.read_text("/app/up.txt") == "uploaded by the cli\n"
    down = run_cli(daemon, "download", f"{sandbox.id}:/app/up.txt", str(tmp_path / "down.txt"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.txt").read_text() == "uploaded by the cli\n"

    killed = run_cli(daemon, "kill", sandbox.id)
    assert killed.returncode == 0, killed.stderr
    assert sandbox.info().state == "stopped"
    assert sandbox.id not in run_cli(daemon, "ls").stdout


def test_errors_are_one_red_line_and_status_one(daemon: Daemon) -> None:
    done = run_cli(daemon, "kill", "no-such-sandbox")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ")
    assert done.stderr.strip().endswith("[sandbox_not_found]")
    assert "Traceback" not in done.stderr


def test_keys_create_list_revoke(daemon: Daemon) -> None:
    created = run_cli(daemon, "keys", "create", "ci-e2e")
    assert created.returncode == 0, created.stderr
    new_key = created.stdout.strip()
    key_id = created.stderr.split()[2]
    assert "ci-e2e" in run_cli(daemon, "keys", "list").stdout
    assert run_cli(daemon, "ls", env={"EMBER_API_KEY": new_key}).returncode == 0
    assert run_cli(daemon, "keys", "revoke", key_id).returncode == 0
    revoked = run_cli(daemon, "ls", env={"EMBER_API_KEY": new_key})
    assert revoked.returncode == 1
    assert "[unauthorized]" in revoked.stderr


def test_shell_is_an_interactive_terminal_with_the_shells_exit_code(daemon: Daemon) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: `ember shell` on a real terminal, as a user would run it
        os.execve(sys.executable, [sys.executable, "-m", "ember", "shell"], daemon.cli_env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    screen = bytearray()

    def read_until(text: bytes, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in screen:
            assert time.monotonic() < deadline, f"{text!r} not on the screen: {bytes(screen[-500:])!r}"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    screen.extend(os.read(fd, 65536))
                except OSError:  # the child exited and closed its terminal
                    return

    try:
        read_until(b"# ")
        os.write(fd, b"stty size\r")
        read_until(b"40 120")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        time.sleep(0.5)
        os.write(fd, b"stty size; exit 5\r")
        read_until(b"50 132")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5
    assert Sandbox.list(base_url=daemon.url, api_key=daemon.api_key) == [], "shell left its sandbox"
