"""The async SDK (``ember.AsyncSandbox``) against a real daemon: the same calls, awaited."""

from __future__ import annotations

import asyncio
import os

import pytest
from e2e_support import AsyncSandboxFactory, Daemon

from ember import AsyncSandbox
from ember.client import AsyncCommandHandle


async def test_async_sandbox_runs_code_commands_files_and_a_terminal(
    async_sandbox_factory: AsyncSandboxFactory,
) -> None:
    sandbox = await async_sandbox_factory(env={"MODE": "async"})
    await sandbox.run_code("x = 42; import json")
    execution = await sandbox.run_code("print(x, json.dumps({'ok': True}))")
    assert execution.stdout == '42 {"ok": true}\n'

    streamed: list[str] = []

    async def on_stdout(text: str) -> None:  # async callbacks are awaited
        streamed.append(text)

    execution = await sandbox.execute("import os; print(os.environ['MODE'])", on_stdout=on_stdout)
    assert "".join(streamed) == "async\n" and execution["stdout"] == "async\n"

    result = await sandbox.commands.run("echo hi; exit 2")
    assert (result.stdout, result.exit_code) == ("hi\n", 2)
    handle = await sandbox.commands.run("cat", background=True, stdin=True)
    assert isinstance(handle, AsyncCommandHandle)
    await handle.send_stdin("piped", eof=True)
    assert (await handle.wait()).stdout == "piped"

    await sandbox.files.write("/app/async.txt", b"async bytes")
    assert await sandbox.files.read("/app/async.txt") == b"async bytes"
    chunks = [chunk async for chunk in sandbox.files.iter_read("/app/async.txt")]
    assert b"".join(chunks) == b"async bytes"
    assert await sandbox.files.exists("/app/async.txt")
    large = os.urandom(5 << 20)  # over the SDK's chunk: sent in pieces, its length said up front
    assert (await sandbox.files.write("/app/large.bin", large)).size == len(large)
    assert await sandbox.files.read("/app/large.bin") == large

    output = bytearray()
    terminal = await sandbox.pty.create(cols=90, rows=20, on_data=output.extend)
    await terminal.send("stty size; exit 6\n")
    assert await asyncio.wait_for(terminal.wait(), 60) == 6
    assert b"20 90" in output


async def test_async_with_creates_and_kills(daemon: Daemon) -> None:
    async with AsyncSandbox(vcpus=1, base_url=daemon.url, api_key=daemon.api_key) as sandbox:
        sandbox_id = sandbox.id
        assert (await sandbox.info()).state == "running"
    ended = await AsyncSandbox.list(all=True, base_url=daemon.url, api_key=daemon.api_key)
    assert next(info for info in ended if info.id == sandbox_id).end_reason == "deleted"


async def test_an_uncreated_async_sandbox_says_how_to_create_it(daemon: Daemon) -> None:
    sandbox = AsyncSandbox(base_url=daemon.url, api_key=daemon.api_key)
    with pytest.raises(RuntimeError, match="create"):
        await sandbox.run_code("1")
    await sandbox.close()
