"""The sync SDK (``ember.Sandbox``) against a real daemon and real microVMs.

Most tests share one module sandbox and add only state of their own (their own
files, variables, processes); tests about a sandbox's lifecycle make their own.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from e2e_support import Daemon, SandboxFactory, wait_until

from ember import ExecTimeoutError, Sandbox
from ember.client import CommandHandle, Execution


def test_run_code_keeps_state_between_cells(shared_sandbox: Sandbox) -> None:
    first = shared_sandbox.run_code("x = 42; import json")
    assert first.error is None
    second = shared_sandbox.run_code("print(x, json.dumps({'ok': True}))")
    assert second.stdout == '42 {"ok": true}\n'
    assert second.execution_count > first.execution_count


def test_run_code_sees_the_sandbox_env(shared_sandbox: Sandbox) -> None:
    assert shared_sandbox.run_code("import os; print(os.environ['MODE'])").stdout == "test\n"


def test_run_code_streams_output_to_callbacks_as_it_is_printed(shared_sandbox: Sandbox) -> None:
    arrivals: list[tuple[float, str]] = []
    errors: list[str] = []
    code = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(i, flush=True)\n"
        "    time.sleep(0.4)\n"
        "print('oops', file=sys.stderr)"
    )
    execution = shared_sandbox.run_code(
        code, on_stdout=lambda text: arrivals.append((time.monotonic(), text)), on_stderr=errors.append
    )
    assert "".join(text for _, text in arrivals) == "0\n1\n2\n"
    assert arrivals[-1][0] - arrivals[0][0] > 0.6, "output arrived all at once, not streamed"
    assert "".join(errors) == "oops\n"
    assert execution.stdout == "0\n1\n2\n" and execution.stderr == "oops\n"


def test_run_code_reports_the_exception_of_the_code(shared_sandbox: Sandbox) -> None:
    execution = shared_sandbox.run_code("def f():\n    raise ValueError('bad input')\nf()")
    assert execution.error is not None
    assert (execution.error.name, execution.error.value) == ("ValueError", "bad input")
    assert "raise ValueError" in execution.error.traceback


def test_run_code_returns_the_last_expression_as_a_rich_result(shared_sandbox: Sandbox) -> None:
    execution = shared_sandbox.run_code("{'a': 1}")
    assert execution.text == "{'a': 1}"
    assert execution.results[0].is_main_result


def test_execute_result_reads_as_a_mapping(shared_sandbox: Sandbox) -> None:
    result = shared_sandbox.execute("print('from execute')")
    assert isinstance(result, Execution)
    assert result["stdout"] == "from execute\n"
    assert isinstance(result["execution_time"], float)
    assert "stdout" in result and "execution_time" in result
    as_dict = dict(result)
    assert as_dict["stdout"] == result.stdout and as_dict["error"] is None


def test_bash_cells_keep_their_shell_state(shared_sandbox: Sandbox) -> None:
    shared_sandbox.run_code("export GREETING=hello; cd /tmp", language="bash")
    execution = shared_sandbox.run_code("echo $GREETING $(pwd)", language="bash")
    assert execution.stdout == "hello /tmp\n"
    assert execution.exit_code == 0


def test_contexts_have_separate_state(shared_sandbox: Sandbox) -> None:
    context = shared_sandbox.contexts.create(cwd="/tmp")
    try:
        shared_sandbox.run_code("y = 'context'", context=context)
        assert shared_sandbox.run_code("print(y)", context=context).stdout == "context\n"
        assert shared_sandbox.run_code("print(y)").error is not None
        assert context.context_id in {c.context_id for c in shared_sandbox.contexts.list()}
        shared_sandbox.contexts.restart(context)
        assert shared_sandbox.run_code("print(y)", context=context.context_id).error is not None
    finally:
        shared_sandbox.contexts.delete(context)
    assert context.context_id not in {c.context_id for c in shared_sandbox.contexts.list()}


def test_foreground_command_returns_output_and_exit_code(shared_sandbox: Sandbox) -> None:
    result = shared_sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert not result.timed_out


def test_command_options_reach_the_process(shared_sandbox: Sandbox) -> None:
    result = shared_sandbox.commands.run("echo $FOO $(pwd)", env={"FOO": "bar"}, cwd="/tmp")
    assert result.stdout == "bar /tmp\n"


def test_command_output_streams_to_callbacks(shared_sandbox: Sandbox) -> None:
    chunks: list[str] = []
    loop = "for i in 1 2 3; do echo $i; sleep 0.2; done"
    result = shared_sandbox.commands.run(loop, on_stdout=chunks.append)
    assert "".join(chunks) == "1\n2\n3\n"
    assert result.stdout == "1\n2\n3\n" and result.exit_code == 0


def test_command_timeout_stops_the_command(shared_sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = shared_sandbox.commands.run("sleep 30", timeout=1)
    assert result.timed_out
    assert time.monotonic() - started < 20


def test_background_command_handle_waits_for_the_result(shared_sandbox: Sandbox) -> None:
    handle = shared_sandbox.commands.run("sleep 0.5; echo done; exit 4", background=True)
    assert isinstance(handle, CommandHandle) and handle.pid > 0
    assert handle.pid in {process.pid for process in shared_sandbox.commands.list()}
    seen: list[str] = []
    result = handle.wait(on_stdout=seen.append)
    assert (result.stdout, result.exit_code) == ("done\n", 4)
    assert "".join(seen) == "done\n"


def test_background_command_reads_stdin(shared_sandbox: Sandbox) -> None:
    handle = shared_sandbox.commands.run("read a; read b; echo got $a $b", background=True, stdin=True)
    handle.send_stdin("one\n")
    handle.send_stdin(b"two\n", eof=True)
    assert handle.wait().stdout == "got one two\n"


def test_background_command_can_be_killed(shared_sandbox: Sandbox) -> None:
    handle = shared_sandbox.commands.run("sleep 300", background=True)
    handle.kill()
    result = handle.wait()
    assert result.exit_code != 0
    assert not next(p for p in shared_sandbox.commands.list() if p.pid == handle.pid).running


def test_commands_connect_reattaches_and_replays_output(shared_sandbox: Sandbox, daemon: Daemon) -> None:
    handle = shared_sandbox.commands.run("echo early; sleep 1; echo late", background=True)
    with Sandbox.connect(shared_sandbox.id, base_url=daemon.url, api_key=daemon.api_key) as other:
        result = other.commands.connect(handle.pid).wait()
    assert result.stdout == "early\nlate\n"


def test_files_round_trip_and_metadata(shared_sandbox: Sandbox) -> None:
    root = f"/app/files-{uuid.uuid4().hex[:8]}"
    info = shared_sandbox.files.mkdir(f"{root}/sub")
    assert info.type == "dir"
    written = shared_sandbox.files.write(f"{root}/a.txt", "héllo\n", mode=0o640)
    assert (written.size, written.mode & 0o777) == (len("héllo\n".encode()), 0o640)
    assert shared_sandbox.files.read(f"{root}/a.txt") == "héllo\n".encode()
    assert shared_sandbox.files.read_text(f"{root}/a.txt") == "héllo\n"
    shared_sandbox.files.write(f"{root}/sub/b.bin", iter([b"ab", b"cd"]))
    assert shared_sandbox.files.read(f"{root}/sub/b.bin") == b"abcd"
    assert {entry.name for entry in shared_sandbox.files.list(root)} == {"a.txt", "sub"}
    assert "b.bin" in {entry.name for entry in shared_sandbox.files.list(root, depth=2)}
    assert shared_sandbox.files.stat(f"{root}/sub/b.bin").size == 4
    renamed = shared_sandbox.files.rename(f"{root}/a.txt", f"{root}/c.txt")
    assert renamed.name == "c.txt"
    assert not shared_sandbox.files.exists(f"{root}/a.txt")
    assert shared_sandbox.files.exists(f"{root}/c.txt")
    assert b"".join(shared_sandbox.files.iter_read(f"{root}/c.txt")) == "héllo\n".encode()
    shared_sandbox.files.remove(root, recursive=True)
    assert not shared_sandbox.files.exists(root)


def test_files_written_by_the_sdk_are_seen_by_code(shared_sandbox: Sandbox) -> None:
    shared_sandbox.files.write("data.csv", b"a,b\n1,2\n")
    execution = shared_sandbox.run_code("print(open('/app/data.csv').read().splitlines()[1])")
    assert execution.stdout == "1,2\n"


def test_large_file_round_trip_streams_from_and_to_disk(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as out:
        for _ in range(20):
            out.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    info = shared_sandbox.files.upload_file(source, "/app/big.bin")
    assert info.size == 20 * 1024 * 1024
    remote = shared_sandbox.commands.run("sha256sum /app/big.bin", timeout=120).stdout.split()[0]
    assert remote == digest
    target = tmp_path / "back.bin"
    shared_sandbox.files.download_file("/app/big.bin", target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".part")] == []
    shared_sandbox.files.remove("/app/big.bin")


def test_terminal_echoes_resizes_and_exits(shared_sandbox: Sandbox) -> None:
    output = bytearray()
    lock = threading.Lock()

    def on_data(data: bytes) -> None:
        with lock:
            output.extend(data)

    def seen(text: bytes) -> bool:
        with lock:
            return text in output

    terminal = shared_sandbox.pty.create(cols=80, rows=24, on_data=on_data)
    terminal.send("echo pty-$((40 + 2))\n")
    wait_until(lambda: seen(b"pty-42"), what="terminal echo")
    terminal.send("stty size\n")
    wait_until(lambda: seen(b"24 80"), what="initial size")
    terminal.resize(100, 30)
    terminal.send("stty size\n")
    wait_until(lambda: seen(b"30 100"), what="size after resize")
    with pytest.raises(ExecTimeoutError, match="still runs"):
        terminal.wait(timeout=0.2)  # the shell runs on, and the terminal stays usable
    terminal.send("exit 3\n")
    assert terminal.wait(timeout=60) == 3


def test_sandbox_info_and_lifetime(shared_sandbox: Sandbox) -> None:
    info = shared_sandbox.info()
    assert (info.id, info.state, info.vcpus) == (shared_sandbox.id, "running", 2)
    updated = shared_sandbox.set_timeout(1200)
    assert updated.expires_at is not None
    assert abs(updated.expires_at - (time.time() + 1200)) < 60


def test_list_filters_by_metadata(sandbox_factory: SandboxFactory, daemon: Daemon) -> None:
    tag = uuid.uuid4().hex
    sandbox = sandbox_factory(metadata={"suite": tag})
    found = Sandbox.list(metadata={"suite": tag}, base_url=daemon.url, api_key=daemon.api_key)
    assert [info.id for info in found] == [sandbox.id]
    assert Sandbox.list(metadata={"suite": "other"}, base_url=daemon.url, api_key=daemon.api_key) == []


def test_close_kills_a_created_sandbox_but_not_a_connected_one(daemon: Daemon) -> None:
    owner = Sandbox(vcpus=1, base_url=daemon.url, api_key=daemon.api_key)
    try:
        joined = Sandbox.connect(owner.id, base_url=daemon.url, api_key=daemon.api_key)
        joined.close()
        assert owner.info().state == "running"
    finally:
        owner.close()
    ended = Sandbox.list(all=True, base_url=daemon.url, api_key=daemon.api_key)
    assert next(info for info in ended if info.id == owner.id).state == "stopped"
    with pytest.raises(RuntimeError, match="closed"):
        owner.run_code("1")
