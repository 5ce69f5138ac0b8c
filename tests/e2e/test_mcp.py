"""``ember mcp`` driven by the MCP SDK's own client, over stdio and streamable HTTP, against a real daemon.

The server runs as a user runs it (``python -m ember mcp``, a subprocess with the
daemon's URL and key in its environment); every sandbox the tests start through it
is killed through it, and none may be left behind.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from e2e_support import Daemon, free_port, stop_process
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent

from ember.client import AsyncKeys as Keys
from ember.client import AsyncSandbox

SERVER_START_TIMEOUT_S = 60.0

# A 4x4 red PNG made with zlib and struct (the base image has no matplotlib), with JSON beside it.
PNG_CELL = """
import json, struct, zlib

class Swatch:
    def _repr_png_(self):
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        rows = b"".join(b"\\x00" + b"\\xff\\x00\\x00" * 4 for _ in range(4))
        header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
        body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
        return b"\\x89PNG\\r\\n\\x1a\\n" + body

    def _repr_json_(self):
        return {"colour": "red", "size": 4}

Swatch()
"""


@pytest.fixture(scope="module")
def http_url(daemon: Daemon) -> Iterator[str]:
    """``ember mcp --transport http`` on a free loopback port, stopped (SIGTERM) after the module."""
    process, url = _start_http_server(daemon)
    try:
        yield url
    finally:
        _stop(process)


def _start_http_server(daemon: Daemon) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", "mcp", "--transport", "http", "--port", str(port)],
        env=daemon.cli_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(process, port)
    except BaseException:
        _stop(process)
        raise
    return process, f"http://127.0.0.1:{port}/mcp"


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process)
    assert process.stderr is not None
    process.stderr.close()


def _wait_for_port(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                assert process.stderr is not None
                raise AssertionError(f"ember mcp did not listen: {process.stderr.read().decode()}") from None
            time.sleep(0.1)


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest, daemon: Daemon) -> Any:
    """Opens an MCP client session to ``ember mcp`` over the transport the test is parametrized with."""
    if request.param == "http":
        url = request.getfixturevalue("http_url")
        return lambda: _http_session(url, daemon.api_key)

    @asynccontextmanager
    async def session() -> AsyncIterator[Client]:
        server = StdioServerParameters(
            command=sys.executable, args=["-m", "ember", "mcp"], env=daemon.cli_env
        )
        async with Client(server) as client:
            yield client

    return session


@asynccontextmanager
async def _http_session(url: str, api_key: str | None) -> AsyncIterator[Client]:
    """A client of the HTTP endpoint, presenting `api_key` (an Ember API key) as its bearer token."""
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def _call(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, _text(result)
    return result


def _text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def _running(daemon: Daemon) -> set[str]:
    return {info.id for info in await AsyncSandbox.list(base_url=daemon.url, api_key=daemon.api_key)}


TOOLS = {
    "create_sandbox",
    "run_code",
    "run_command",
    "write_file",
    "read_file",
    "list_files",
    "snapshot_sandbox",
    "fork_sandbox",
    "kill_sandbox",
    "expose_port",
    "list_sandboxes",
    "list_snapshots",
    "delete_snapshot",
}


async def test_tools_have_precise_schemas(connect: Any) -> None:
    async with connect() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description, f"{tool.name} has no description"
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"

    create = tools["create_sandbox"].input_schema
    assert create.get("required", []) == []
    assert (create["properties"]["memory_mb"]["minimum"], create["properties"]["memory_mb"]["maximum"]) == (
        128,
        8192,
    )
    assert (create["properties"]["vcpus"]["minimum"], create["properties"]["vcpus"]["maximum"]) == (1, 8)
    run_code = tools["run_code"].input_schema
    assert set(run_code["required"]) == {"sandbox_id", "code"}
    assert run_code["properties"]["language"]["enum"] == ["python", "bash"]
    assert run_code["properties"]["timeout"]["maximum"] == 3600
    assert run_code["properties"]["timeout"]["exclusiveMinimum"] == 0
    assert set(tools["write_file"].input_schema["required"]) == {"sandbox_id", "path", "content"}
    assert tools["list_files"].input_schema["properties"]["depth"]["maximum"] == 8
    assert tools["read_file"].annotations is not None and tools["read_file"].annotations.read_only_hint
    command_output = tools["run_command"].output_schema
    assert command_output is not None
    assert set(command_output["required"]) >= {"exit_code", "stdout", "stderr", "timed_out"}


async def test_a_sandbox_from_create_to_kill(connect: Any, daemon: Daemon) -> None:
    before = await _running(daemon)
    snapshot_id = None
    async with connect() as client:
        created = await _call(client, "create_sandbox", memory_mb=512, vcpus=1, env={"GREETING": "hi"})
        sandbox_id = created.structured_content["id"]
        try:
            assert sandbox_id in await _running(daemon)

            await _call(client, "run_code", sandbox_id=sandbox_id, code="import os\nanswer = 6 * 7")
            kept = await _call(
                client, "run_code", sandbox_id=sandbox_id, code="answer, os.environ['GREETING']"
            )
            assert kept.structured_content["results"][0]["text"] == "(42, 'hi')"
            assert "(42, 'hi')" in _text(kept)

            shown = await _call(client, "run_code", sandbox_id=sandbox_id, code=PNG_CELL)
            images = [block for block in shown.content if isinstance(block, ImageContent)]
            assert len(images) == 1 and images[0].mime_type == "image/png"
            assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
            assert '[application/json]\n{"colour": "red", "size": 4}' in _text(shown)
            assert shown.structured_content["results"][0]["formats"] == [
                "application/json",
                "image/png",
                "text/plain",
            ]

            failed = await _call(client, "run_code", sandbox_id=sandbox_id, code="1 / 0")
            assert failed.structured_content["error"]["name"] == "ZeroDivisionError"
            assert "ZeroDivisionError" in _text(failed)

            command = await _call(
                client, "run_command", sandbox_id=sandbox_id, command="echo out; echo err >&2; exit 3"
            )
            assert command.structured_content == {
                "exit_code": 3,
                "stdout": "out\n",
                "stderr": "err\n",
                "timed_out": False,
            }

            written = await _call(
                client, "write_file", sandbox_id=sandbox_id, path="notes/plan.txt", content="step 1\n"
            )
            assert written.structured_content["path"] == "/app/notes/plan.txt"
            read = await _call(client, "read_file", sandbox_id=sandbox_id, path="/app/notes/plan.txt")
            assert _text(read) == "step 1\n"
            listed = await _call(client, "list_files", sandbox_id=sandbox_id, path="/app/notes")
            assert [(e["path"], e["type"], e["size"]) for e in listed.structured_content["entries"]] == [
                ("/app/notes/plan.txt", "file", 7)
            ]
            pixel = base64.b64decode(images[0].data)
            await _call(
                client,
                "write_file",
                sandbox_id=sandbox_id,
                path="swatch.png",
                content=base64.b64encode(pixel).decode(),
                encoding="base64",
            )
            image = await _call(client, "read_file", sandbox_id=sandbox_id, path="swatch.png")
            assert (
                isinstance(image.content[0], ImageContent)
                and base64.b64decode(image.content[0].data) == pixel
            )

            snapshot = await _call(client, "snapshot_sandbox", sandbox_id=sandbox_id)
            snapshot_id = snapshot.structured_content["id"]
            assert snapshot_id in {
                entry["id"]
                for entry in (await _call(client, "list_snapshots")).structured_content["snapshots"]
            }
            forked = await _call(client, "fork_sandbox", sandbox_id=sandbox_id, count=1)
            (fork,) = forked.structured_content["sandboxes"]
            assert fork["id"] != sandbox_id
            in_fork = await _call(client, "run_code", sandbox_id=fork["id"], code="answer + 1")
            assert in_fork.structured_content["results"][0]["text"] == "43"
            listed_sandboxes = (await _call(client, "list_sandboxes")).structured_content["sandboxes"]
            assert {sandbox_id, fork["id"]} <= {entry["id"] for entry in listed_sandboxes}
            await _call(client, "kill_sandbox", sandbox_id=fork["id"])
            gone = await _error(client, "run_command", sandbox_id=fork["id"], command="true")
            assert "[sandbox_not_found]" in gone and "create_sandbox" in gone
            assert "[sandbox_not_found]" in await _error(client, "kill_sandbox", sandbox_id=fork["id"])
        finally:
            await _call(client, "kill_sandbox", sandbox_id=sandbox_id)
            if snapshot_id is not None:
                await _call(client, "delete_snapshot", snapshot_id=snapshot_id)
        assert await _running(daemon) == before


async def _error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool}({arguments}) succeeded: {_text(result)}"
    return _text(result)


async def test_a_sandbox_with_an_allowlist_and_an_exposed_port(connect: Any, daemon: Daemon) -> None:
    async with connect() as client:
        assert "[invalid_request]" in await _error(
            client, "create_sandbox", network="allowlist", allow=["not a domain"]
        )
        created = await _call(
            client, "create_sandbox", vcpus=1, network="allowlist", allow=["allowed.test", "10.0.0.0/8"]
        )
        sandbox_id = created.structured_content["id"]
        try:
            network = created.structured_content["network"]
            assert (
                network["mode"] == "allowlist" and network["cidrs"] == ["10.0.0.0/8"] and network["address"]
            )
            names = await _call(
                client,
                "run_code",
                sandbox_id=sandbox_id,
                code="import socket; socket.gethostbyname('allowed.test')",
            )
            assert names.structured_content["results"][0]["text"].startswith("'10.213.")
            exposed = await _call(client, "expose_port", sandbox_id=sandbox_id, port=8000)
            assert (
                exposed.structured_content["url"].startswith("http") and exposed.structured_content["token"]
            )
            assert "port" in await _error(client, "expose_port", sandbox_id=sandbox_id, port=70000)
        finally:
            await _call(client, "kill_sandbox", sandbox_id=sandbox_id)


async def test_bad_arguments_and_unknown_ids_are_tool_errors_the_model_can_act_on(
    connect: Any, daemon: Daemon
) -> None:
    before = await _running(daemon)
    async with connect() as client:
        unknown = await _error(client, "run_code", sandbox_id="0123456789abcdef", code="1")
        assert "[sandbox_not_found]" in unknown and "create_sandbox" in unknown
        assert "[template_not_found]" in await _error(client, "create_sandbox", template="no-such-template")
        too_big = await _error(client, "create_sandbox", memory_mb=100_000)
        assert "memory_mb" in too_big and "8192" in too_big
        assert "sandbox_id" in await _error(client, "kill_sandbox", sandbox_id=42)
        wrong_type = await _error(
            client, "run_command", sandbox_id="0123456789abcdef", command="ls", timeout="soon"
        )
        assert "timeout" in wrong_type
        assert "code" in await _error(client, "run_code", sandbox_id="0123456789abcdef")
    assert await _running(daemon) == before, "a refused call started a sandbox"


async def test_bad_paths_are_tool_errors_and_the_sandbox_ends_when_the_stdio_client_leaves(
    daemon: Daemon,
) -> None:
    before = await _running(daemon)
    server = StdioServerParameters(command=sys.executable, args=["-m", "ember", "mcp"], env=daemon.cli_env)
    async with Client(server) as client:
        sandbox_id = (await _call(client, "create_sandbox", vcpus=1)).structured_content["id"]
        assert sandbox_id in await _running(daemon)
        assert "depth" in await _error(client, "list_files", sandbox_id=sandbox_id, depth=0)
        assert "path" in await _error(client, "read_file", sandbox_id=sandbox_id, path="/etc/\0passwd")
        missing = await _error(client, "read_file", sandbox_id=sandbox_id, path="no/such/file")
        assert "[file_not_found]" in missing and "list_files" in missing
        assert "[is_a_directory]" in await _error(client, "read_file", sandbox_id=sandbox_id, path="/app")
        outside = await _error(
            client, "write_file", sandbox_id=sandbox_id, path="../proc/version", content="x"
        )
        assert "/proc/version" in outside and "[invalid_request]" in outside and "run_command" in outside
        bad_base64 = await _error(
            client, "write_file", sandbox_id=sandbox_id, path="b.bin", content="%%%", encoding="base64"
        )
        assert "[invalid_request]" in bad_base64
    assert await _running(daemon) == before, "the server left its sandbox running when its client left"


async def test_the_http_server_serves_each_api_key_its_own_sandboxes_and_kills_them_when_stopped(
    daemon: Daemon,
) -> None:
    before = await _running(daemon)
    process, url = _start_http_server(daemon)
    try:
        for key in (None, "not-an-ember-key"):
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            async with httpx2.AsyncClient(headers=headers) as http:
                response = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert response.status_code == 401, response.text

        async with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
            other = await keys.create("mcp-e2e-other")
            try:
                async with _http_session(url, daemon.api_key) as owner:
                    mine = (await _call(owner, "create_sandbox", vcpus=1)).structured_content["id"]
                    async with _http_session(url, other.key) as stranger:
                        listed = (await _call(stranger, "list_sandboxes")).structured_content["sandboxes"]
                        assert mine not in {entry["id"] for entry in listed}
                        refused = await _error(stranger, "run_command", sandbox_id=mine, command="true")
                        assert "[sandbox_not_found]" in refused
                        assert "[sandbox_not_found]" in await _error(
                            stranger, "kill_sandbox", sandbox_id=mine
                        )
                    ran = await _call(owner, "run_command", sandbox_id=mine, command="true")
                    assert ran.structured_content["exit_code"] == 0
            finally:
                await keys.revoke(other.id)
        assert mine in await _running(daemon), "a sandbox must outlive the HTTP session that made it"
    finally:
        _stop(process)
    assert await _running(daemon) == before, "the server left its sandboxes running when it stopped"
