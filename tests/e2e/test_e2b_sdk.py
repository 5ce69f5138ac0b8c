"""E2B's own SDK (``e2b``, sync and async) against Ember: control plane, commands, files.

The SDK is configured the way a user switches: E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY in the environment, nothing else.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import AsyncSandbox, CommandExitException, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import (
    AuthenticationException,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
    TimeoutException,
)


@pytest.fixture(scope="module")
def sandbox(e2b_env: None) -> Iterator[Sandbox]:
    box = Sandbox.create(timeout=900, envs={"GREETING": "hello"}, metadata={"suite": "e2b"})
    try:
        yield box
    finally:
        box.kill()


def test_create_with_env_and_metadata_is_listed(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("echo $GREETING").stdout == "hello\n"
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id and info.metadata == {"suite": "e2b"}
    listed = Sandbox.list().next_items()
    assert sandbox.sandbox_id in [s.sandbox_id for s in listed]
    matching = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b"}, state=[SandboxState.RUNNING]))
    assert [s.sandbox_id for s in matching.next_items()] == [sandbox.sandbox_id]
    assert not Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items()
    assert sandbox.is_running()


def test_commands_stdout_stderr_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo out; echo err >&2; exit 0")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo nope >&2; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stderr == "nope\n"
    seen: list[str] = []
    sandbox.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=seen.append)
    assert "".join(seen) == "1\n2\n3\n"
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sandbox.commands.run("pwd").stdout == "/home/user\n"  # E2B's working directory
    assert sandbox.commands.run("whoami", user="user").stdout == "user\n"
    assert sandbox.commands.run("echo $X", envs={"X": "y"}).stdout == "y\n"


def test_background_command_reconnected_by_pid_with_stdin(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run(
        "read line; echo got $line; sleep 1; echo done", background=True, stdin=True
    )
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in listed and listed[handle.pid].cmd == "/bin/bash"
    sandbox.commands.send_stdin(handle.pid, "ping\n")
    again = sandbox.commands.connect(handle.pid)
    result = again.wait()
    assert result.exit_code == 0 and "done" in result.stdout
    assert "got ping" in handle.wait().stdout


def test_streamed_stdin_and_eof(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat; echo end", background=True, stdin=True)
    sandbox.commands.stream_input(handle.pid, [b"one ", "two ", b"three"])
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "one two threeend\n"


def test_signal_kills_a_background_command(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 600", background=True)
    assert sandbox.commands.kill(handle.pid)
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert not sandbox.commands.kill(handle.pid)


def test_files_write_read_list_stat_move_remove(sandbox: Sandbox) -> None:
    info = sandbox.files.write("/tmp/e2b/notes.txt", "hi there")
    assert info.path == "/tmp/e2b/notes.txt"
    assert sandbox.files.read("/tmp/e2b/notes.txt") == "hi there"
    assert sandbox.files.make_dir("/tmp/e2b/sub")
    assert not sandbox.files.make_dir("/tmp/e2b/sub")
    names = sorted(entry.name for entry in sandbox.files.list("/tmp/e2b"))
    assert names == ["notes.txt", "sub"]
    entry = sandbox.files.get_info("/tmp/e2b/notes.txt")
    assert entry.size == 8 and entry.type.value == "file"
    moved = sandbox.files.rename("/tmp/e2b/notes.txt", "/tmp/e2b/sub/moved.txt")
    assert moved.path == "/tmp/e2b/sub/moved.txt"
    assert not sandbox.files.exists("/tmp/e2b/notes.txt")
    sandbox.files.remove("/tmp/e2b")
    assert not sandbox.files.exists("/tmp/e2b")
    sandbox.files.write("notes/relative.txt", "under home")  # relative: under /home/user, as on E2B
    assert sandbox.commands.run("cat notes/relative.txt").stdout == "under home"
    assert sandbox.files.read("/home/user/notes/relative.txt") == "under home"
    with pytest.raises(NotFoundException):
        sandbox.files.read("/tmp/e2b/sub/moved.txt")


def test_twenty_megabyte_binary_round_trip(sandbox: Sandbox) -> None:
    data = secrets.token_bytes(20 * 1024 * 1024)
    sandbox.files.write("/tmp/blob.bin", data)
    assert sandbox.commands.run("stat -c %s /tmp/blob.bin").stdout.strip() == str(len(data))
    assert bytes(sandbox.files.read("/tmp/blob.bin", format="bytes")) == data
    sandbox.files.write_files(
        [{"path": "/tmp/multi/a.bin", "data": data[:1000]}, {"path": "/tmp/multi/b", "data": "b"}]
    )
    assert sandbox.files.read("/tmp/multi/a.bin", format="bytes") == data[:1000]
    sandbox.files.remove("/tmp/blob.bin")


def test_errors_map_to_the_sdks_exceptions(e2b_env: None, sandbox: Sandbox) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    with pytest.raises(NotFoundException):
        Sandbox.connect("0123456789abcdef")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("0123456789abcdef")
    assert not Sandbox.kill("0123456789abcdef")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir("/etc/hostname/below-a-file")
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30 # deadline", timeout=1)
    deadline = time.monotonic() + 30  # killed at its deadline, as on E2B
    while [p for p in sandbox.commands.list() if "deadline" in " ".join(p.args)]:
        assert time.monotonic() < deadline, "the command outlived its timeout"
        time.sleep(0.2)
    with pytest.raises(SandboxException):
        Sandbox.create(template="no-such-template")


async def test_async_sandbox_commands_and_files(e2b_env: None) -> None:
    box = await AsyncSandbox.create(timeout=600)
    try:
        result = await box.commands.run("echo async")
        assert result.stdout == "async\n"
        await box.files.write("/tmp/a.txt", b"bytes")
        assert await box.files.read("/tmp/a.txt") == "bytes"
        assert os.path.basename((await box.files.list("/tmp"))[0].path)
        await box.set_timeout(120)
    finally:
        await box.kill()
    assert not await AsyncSandbox.kill(box.sandbox_id)


def test_watch_dir_reports_changes(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("/tmp/watched/deep")
    handle = sandbox.files.watch_dir("/tmp/watched", recursive=True)
    try:
        sandbox.commands.run(
            "echo a > /tmp/watched/a.txt; echo b > /tmp/watched/deep/b.txt; rm /tmp/watched/a.txt"
        )
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 30
        wanted = {("a.txt", "create"), ("a.txt", "write"), ("deep/b.txt", "create"), ("a.txt", "remove")}
        while not wanted <= seen:
            assert time.monotonic() < deadline, f"missing events {wanted - seen}"
            seen |= {(e.name, e.type.name.lower()) for e in handle.get_new_events()}
            time.sleep(0.2)
    finally:
        handle.stop()
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir("/tmp/no-such-dir")


async def test_async_watch_dir_streams_changes(e2b_env: None) -> None:
    box = await AsyncSandbox.create(timeout=600)
    try:
        await box.files.make_dir("/tmp/w")
        events: list[tuple[str, str]] = []
        handle = await box.files.watch_dir("/tmp/w", on_event=lambda e: events.append((e.name, e.type.name)))
        await box.commands.run("touch /tmp/w/new")
        deadline = time.monotonic() + 30
        while ("new", "CREATE") not in events:
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.2)
        await handle.stop()
    finally:
        await box.kill()


def test_in_sandbox_calls_need_the_sandboxs_access_token(e2b_env: dict[str, str], sandbox: Sandbox) -> None:
    url, key = e2b_env["E2B_SANDBOX_URL"], e2b_env["E2B_API_KEY"]
    token = httpx.get(f"{url}/sandboxes/{sandbox.sandbox_id}", headers={"X-API-KEY": key}).json()[
        "envdAccessToken"
    ]
    envd = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
    stat = f"{url}/filesystem.Filesystem/Stat"
    assert httpx.post(stat, json={"path": "/"}, headers={**envd, "X-Access-Token": token}).status_code == 200
    for headers in (envd, {**envd, "X-Access-Token": "0" * 64}, {**envd, "X-Access-Token": key}):
        assert httpx.post(stat, json={"path": "/"}, headers=headers).status_code == 401
    other = Sandbox.create(timeout=300)
    try:  # one sandbox's token opens no other sandbox
        headers = {**envd, "E2b-Sandbox-Id": other.sandbox_id, "X-Access-Token": token}
        assert httpx.post(stat, json={"path": "/"}, headers=headers).status_code == 401
    finally:
        other.kill()
    unknown = httpx.post(f"{url}/process.Process/Nope", json={}, headers={**envd, "X-Access-Token": token})
    assert unknown.status_code == 501 and unknown.json()["code"] == "unimplemented"
    closed = httpx.get(f"{url}/", headers={**envd, "E2b-Sandbox-Port": "8080", "X-Access-Token": token})
    assert closed.status_code == 502 and "not open" in closed.json()["message"]
    # Host-based routing, as E2B's {port}-{sandbox_id}.{domain} (the test daemon's domain is e2b.test).
    by_host = {"Host": f"49983-{sandbox.sandbox_id}.e2b.test", "X-Access-Token": token}
    listed = httpx.post(f"{url}/filesystem.Filesystem/ListDir", json={"path": "/"}, headers=by_host)
    assert listed.status_code == 200 and "etc" in [e["name"] for e in listed.json()["entries"]]
    interpreter = {**by_host, "Host": f"49999-{sandbox.sandbox_id}.e2b.test"}
    assert httpx.get(f"{url}/contexts", headers=interpreter).status_code == 200
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # Ember's own API on its own host
