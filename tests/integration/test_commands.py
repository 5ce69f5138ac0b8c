"""Commands, background processes and terminals in a real microVM."""

from __future__ import annotations

import asyncio
import re

import pytest

from ember import errors

pytestmark = pytest.mark.integration


async def test_shell_command_reports_output_and_exit_code(shared_sandbox):
    result = await shared_sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert not result.truncated and not result.timed_out


async def test_argv_command_runs_without_a_shell(shared_sandbox):
    result = await shared_sandbox.commands.run(["printf", "%s|", "a b", "$HOME"])
    assert result.stdout == "a b|$HOME|"


async def test_env_and_cwd_apply_to_the_command(shared_sandbox):
    await shared_sandbox.files.mkdir("/tmp/cwd-test")
    result = await shared_sandbox.commands.run(
        "pwd; echo $MODE $EXTRA", cwd="/tmp/cwd-test", env={"EXTRA": "x"}
    )
    assert result.stdout == "/tmp/cwd-test\ntest x\n"


async def test_default_working_directory_is_app(shared_sandbox):
    assert (await shared_sandbox.commands.run("pwd")).stdout == "/app\n"


async def test_commands_can_run_as_the_unprivileged_user(shared_sandbox):
    result = await shared_sandbox.commands.run("id -un; echo $HOME", user="user")
    assert result.stdout == "user\n/home/user\n"


async def test_timeout_kills_the_whole_process_group(shared_sandbox):
    result = await shared_sandbox.commands.run("sleep 60 & sleep 60; echo never", timeout_s=1)
    assert result.timed_out and result.exit_code != 0
    assert "never" not in result.stdout
    left = await shared_sandbox.commands.run("pgrep -x sleep || true")
    assert left.stdout == ""


async def test_missing_command_and_directory_are_clear_errors(shared_sandbox):
    with pytest.raises(errors.ExecFailedError, match="not found"):
        await shared_sandbox.commands.run(["no-such-binary"])
    with pytest.raises(errors.NotADirectoryError, match="does not exist"):
        await shared_sandbox.commands.run("true", cwd="/nope")
    result = await shared_sandbox.commands.run("no-such-binary")
    assert result.exit_code == 127


async def test_huge_output_is_truncated_with_a_flag_and_agent_memory_stays_bounded(shared_sandbox):
    def agent_rss_kib(status: str) -> int:
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    before = agent_rss_kib((await shared_sandbox.commands.run("cat /proc/1/status")).stdout)
    result = await shared_sandbox.commands.run("head -c 1G /dev/zero | tr '\\0' x", timeout_s=600)
    assert result.exit_code == 0
    assert result.truncated
    assert 0 < len(result.stdout) <= 16 * 1024 * 1024
    after = agent_rss_kib((await shared_sandbox.commands.run("cat /proc/1/status")).stdout)
    assert after - before < 64 * 1024, f"agent grew from {before} KiB to {after} KiB"


async def test_background_process_survives_a_disconnect_and_is_reattached(shared_sandbox):
    pid = await shared_sandbox.commands.start(
        "for i in $(seq 1 6); do echo tick $i; sleep 0.5; done", tag="ticker"
    )
    seen: list[str] = []
    attach = asyncio.create_task(shared_sandbox.commands.attach(pid, on_stdout=seen.append))
    while not seen:
        await asyncio.sleep(0.05)
    attach.cancel()  # the client goes away mid-stream
    with pytest.raises(asyncio.CancelledError):
        await attach
    await shared_sandbox.reconnect()  # and the whole channel with it
    listed = {p.pid: p for p in await shared_sandbox.commands.list()}
    assert listed[pid].tag == "ticker"
    result = await shared_sandbox.commands.attach(pid)
    assert result.exit_code == 0
    assert result.stdout == "".join(f"tick {i}\n" for i in range(1, 7))


async def test_stdin_and_signals_reach_a_background_process(shared_sandbox):
    pid = await shared_sandbox.commands.start("read line; echo got:$line; sleep 60", stdin=True)
    await shared_sandbox.commands.send_stdin(pid, b"hello\n")
    await asyncio.sleep(0.5)
    await shared_sandbox.commands.kill(pid, "SIGTERM")
    result = await shared_sandbox.commands.attach(pid)
    assert result.stdout == "got:hello\n"
    assert result.signal == 15


async def test_closing_stdin_ends_a_reader(shared_sandbox):
    pid = await shared_sandbox.commands.start("wc -c", stdin=True)
    await shared_sandbox.commands.send_stdin(pid, b"12345", eof=True)
    result = await shared_sandbox.commands.attach(pid)
    assert result.stdout.strip() == "5"


async def test_unknown_pid_is_process_not_found(shared_sandbox):
    with pytest.raises(errors.ProcessNotFoundError):
        await shared_sandbox.commands.attach(999999)
    with pytest.raises(errors.InvalidRequestError):
        await shared_sandbox.commands.kill(1, "SIGNOPE")


async def test_pty_echoes_input_and_follows_resize(shared_sandbox):
    pid = await shared_sandbox.pty.create(cols=80, rows=24)
    output = bytearray()
    stream = asyncio.create_task(shared_sandbox.pty.stream(pid, output.extend))

    async def wait_for_text(text: bytes) -> None:
        for _ in range(300):
            if text in output:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in {bytes(output)[-400:]!r}")

    await shared_sandbox.pty.send(pid, b"echo typed-$((40+2))\n")
    await wait_for_text(b"typed-42")
    await shared_sandbox.pty.send(pid, b"stty size\n")
    await wait_for_text(b"24 80")
    await shared_sandbox.pty.resize(pid, cols=132, rows=50)
    await shared_sandbox.pty.send(pid, b"stty size\n")
    await wait_for_text(b"50 132")
    await shared_sandbox.pty.send(pid, b"echo $MODE; exit 7\n")
    result = await asyncio.wait_for(stream, 30)
    assert result.exit_code == 7
    assert b"test" in output
