"""The OpenAI Agents SDK's ``SandboxAgent`` in Ember sandboxes, through real ``Runner.run`` calls.

The model is the SDK's own ``ScriptedModel`` (offline, deterministic): each step is
the tool call a real model would make, and the tools run for real in a microVM
behind the test daemon.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from agents import RunConfig, Runner
from agents.items import ToolCallOutputItem
from agents.result import RunResult
from agents.sandbox import LocalSnapshotSpec, Manifest, SandboxAgent, SandboxRunConfig
from agents.sandbox.entries import Dir, File, LocalDir, LocalFile
from agents.sandbox.errors import (
    ExecTimeoutError,
    ExecTransportError,
    ExposedPortUnavailableError,
    InvalidManifestPathError,
    PtySessionNotFoundError,
    WorkspaceReadNotFoundError,
)
from agents.sandbox.manifest import Environment
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
from e2e_support import PORTS_DOMAIN, Daemon
from openai.types.responses import ResponseCustomToolCall

from ember import errors
from ember.client import AsyncSandbox
from ember.integrations.openai_agents import (
    EmberSandboxClient,
    EmberSandboxClientOptions,
    EmberSandboxSessionState,
)

ROOT = "/workspace"
#: One vCPU boots faster under TCG on a shared host.
ONE_VCPU = EmberSandboxClientOptions(vcpus=1)

# A 2x1 RGB PNG written with the standard library only (the guest has no PIL).
MAKE_PNG = r"""
import struct, zlib
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
raw = b'\x00' + b'\xff\x00\x00' + b'\x00\x00\xff'
png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 2, 1, 8, 2, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
open('img/dot.png', 'wb').write(png)
"""

ADD_APP = """*** Begin Patch
*** Add File: src/app.py
+def greet(name):
+    return "hello " + name
+
+print(greet("patch"))
*** End Patch"""

EDIT_APP = """*** Begin Patch
*** Update File: src/app.py
@@
 def greet(name):
-    return "hello " + name
+    return "bonjour " + name
*** End Patch"""

MOVE_AND_DELETE = """*** Begin Patch
*** Update File: notes/readme.txt
*** Move to: notes/moved.txt
@@
-manifest file
+moved file
*** Delete File: local.txt
*** End Patch"""

ASK_NAME = "python3 -c \"name = input('name? '); print('hello', name)\""


def shell(call_id: str, cmd: str, **args: object) -> list[object]:
    return [function_call("exec_command", {"cmd": cmd, **args}, call_id=call_id)]


def patch(call_id: str, text: str) -> list[object]:
    return [ResponseCustomToolCall(type="custom_tool_call", call_id=call_id, name="apply_patch", input=text)]


def answer_the_prompt(call: ModelCall) -> list[object]:
    """Type a name into the process the previous ``exec_command`` left running (its id is random)."""
    outputs = [
        item for item in call.input if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]
    match = re.search(r"session ID (\d+)", str(outputs[-1]["output"]))
    assert match, f"exec_command did not leave a session running: {outputs[-1]}"
    arguments = {"session_id": int(match.group(1)), "chars": "Ada\n", "yield_time_ms": 10_000}
    return [function_call("write_stdin", arguments, call_id="stdin")]


def tool_outputs(result: RunResult) -> dict[str, object]:
    """Each tool call's output by call id."""
    outputs = {}
    for item in result.new_items:
        if isinstance(item, ToolCallOutputItem):
            raw = item.raw_item
            call_id = raw["call_id"] if isinstance(raw, dict) else raw.call_id
            outputs[call_id] = item.output
    return outputs


def saved_state(client: EmberSandboxClient, result: RunResult) -> EmberSandboxSessionState:
    """The run's sandbox session state after a trip through JSON, as an application would keep it."""
    payload = json.loads(json.dumps(result.to_state().to_json()["sandbox"]["session_state"]))
    state = client.deserialize_session_state(payload)
    assert isinstance(state, EmberSandboxSessionState)
    return state


async def run(agent: SandboxAgent, config: SandboxRunConfig) -> RunResult:
    result = await Runner.run(
        agent, "go", run_config=RunConfig(sandbox=config, tracing_disabled=True), max_turns=20
    )
    assert isinstance(agent.model, ScriptedModel)
    agent.model.assert_complete()
    return result


async def is_running(daemon: Daemon, sandbox_id: str) -> bool:
    try:
        sandbox = await AsyncSandbox.connect(sandbox_id, base_url=daemon.url, api_key=daemon.api_key)
    except errors.SandboxNotFoundError:
        return False
    try:
        return (await sandbox.info()).state == "running"
    finally:
        await sandbox.close()


@pytest.fixture
def client(daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmberSandboxClient:
    # The SDK's default snapshot directory lives under XDG_STATE_HOME: keep it out of the home directory.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return EmberSandboxClient(base_url=daemon.url, api_key=daemon.api_key)


async def test_sandbox_agent_works_in_ember_and_a_resumed_run_finds_its_files(
    daemon: Daemon, client: EmberSandboxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the SDK takes local sources from under the working directory
    (tmp_path / "local.txt").write_text("from the host\n")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("tree a\n")
    (tmp_path / "tree" / "sub" / "b.txt").write_text("tree b\n")
    manifest = Manifest(
        root=ROOT,
        entries={
            "notes/readme.txt": File(content=b"manifest file\n"),
            "empty": Dir(),
            "local.txt": LocalFile(src=Path("local.txt")),
            "tree": LocalDir(src=Path("tree")),
        },
        environment=Environment(value={"GREETING": "from the manifest"}),
    )
    model = ScriptedModel(
        [
            shell(
                "look",
                "pwd; echo $GREETING; cat notes/readme.txt local.txt tree/a.txt tree/sub/b.txt; "
                "test -d empty && echo empty-dir; exit 3",
            ),
            patch("add", ADD_APP),
            patch("edit", EDIT_APP),
            patch("move", MOVE_AND_DELETE),
            shell("run", f"python3 src/app.py && mkdir -p img && python3 -c {shlex.quote(MAKE_PNG)}"),
            [function_call("view_image", {"path": "img/dot.png"}, call_id="image")],
            [function_call("view_image", {"path": "../etc/passwd"}, call_id="escape")],
            shell("ask", ASK_NAME, tty=True, yield_time_ms=3000),
            ModelStep.respond(answer_the_prompt),
            # Left running: the end of the run must end them (a pipe-backed one and a terminal).
            shell("idle", "sleep 600", yield_time_ms=250),
            shell("typing", "cat", tty=True, yield_time_ms=250),
            [assistant_message("done")],
        ]
    )
    snapshots = LocalSnapshotSpec(base_path=tmp_path / "snapshots")
    agent = SandboxAgent(name="builder", model=model, default_manifest=manifest)
    first = await run(agent, SandboxRunConfig(client=client, options=ONE_VCPU, snapshot=snapshots))

    outputs = tool_outputs(first)
    look = str(outputs["look"])
    assert "Process exited with code 3" in look
    for expected in (
        ROOT,
        "from the manifest",
        "manifest file",
        "from the host",
        "tree a",
        "tree b",
        "empty-dir",
    ):
        assert expected in look, (expected, look)
    assert "src/app.py" in str(outputs["add"]) and "src/app.py" in str(outputs["edit"])
    ran = str(outputs["run"])
    assert "bonjour patch" in ran and "Process exited with code 0" in ran, ran
    image = outputs["image"]
    assert image.image_url.startswith("data:image/png;base64,")  # type: ignore[attr-defined]
    assert base64.b64decode(image.image_url.split(",", 1)[1]).startswith(b"\x89PNG")  # type: ignore[attr-defined]
    assert "Invalid path" in str(outputs["escape"])
    assert "name?" in str(outputs["ask"]) or "name?" in str(outputs["stdin"])
    answered = str(outputs["stdin"])
    assert "hello Ada" in answered and "Process exited with code 0" in answered, answered

    for still_running in ("idle", "typing"):
        assert "Process running with session ID" in str(outputs[still_running])

    state = saved_state(client, first)
    assert not await is_running(daemon, state.sandbox_id)  # without keep_alive the run's end killed it

    second_model = ScriptedModel(
        [
            shell("again", "cat src/app.py notes/moved.txt; ls; ls img empty; echo $GREETING"),
            [assistant_message("ok")],
        ]
    )
    second_agent = SandboxAgent(name="builder", model=second_model)
    second = await run(second_agent, SandboxRunConfig(client=client, session_state=state))
    again = str(tool_outputs(second)["again"])
    for expected in ("bonjour", "moved file", "dot.png", "from the manifest"):
        assert expected in again, (expected, again)
    assert "local.txt" not in again and "readme.txt" not in again, again
    assert saved_state(client, second).sandbox_id != state.sandbox_id  # a new sandbox, hydrated from the tar


async def test_kept_alive_sandbox_is_reattached_and_an_ember_snapshot_brings_it_back(
    daemon: Daemon, client: EmberSandboxClient, tmp_path: Path
) -> None:
    """Run 1 leaves its sandbox running (keep_alive) and saves an Ember snapshot; a session resumed
    from its state reattaches to it; once it is gone, run 3 gets it back from the snapshot,
    background process included."""
    connection = {"base_url": daemon.url, "api_key": daemon.api_key}
    model = ScriptedModel(
        [
            shell("start", "echo kept > kept.txt; nohup sleep 600 >/dev/null 2>&1 & echo started"),
            [assistant_message("started")],
        ]
    )
    agent = SandboxAgent(name="keeper", model=model, default_manifest=Manifest(root=ROOT))
    options = EmberSandboxClientOptions(
        vcpus=1,
        keep_alive=True,
        workspace_persistence="snapshot",
        timeout=600,
        exposed_ports=(8080,),
        network="full",
    )
    snapshots = LocalSnapshotSpec(base_path=tmp_path / "snapshots")
    first = await run(agent, SandboxRunConfig(client=client, options=options, snapshot=snapshots))
    state = saved_state(client, first)
    ember_snapshots = {state.ember_snapshot_id}
    try:
        assert state.ember_snapshot_id is not None
        assert await is_running(daemon, state.sandbox_id)
        state.options = state.options.model_copy(update={"keep_alive": False})

        session = await client.resume(state)
        await session.start()  # reattaches
        try:
            assert session.state.sandbox_id == state.sandbox_id
            processes = await session.exec("pgrep -x sleep")
            assert processes.exit_code == 0, "the background process of the first run is gone"
            assert (await session.read(Path("kept.txt"))).read() == b"kept\n"

            failed = await session.exec("echo out; echo err >&2; exit 7")
            assert (failed.exit_code, failed.stdout, failed.stderr) == (7, b"out\n", b"err\n")
            with pytest.raises(ExecTimeoutError):
                await session.exec("sleep 30", timeout=1)
            with pytest.raises(InvalidManifestPathError):
                await session.read(Path("../etc/passwd"))
            with pytest.raises(InvalidManifestPathError):
                await session.write(Path("/etc/evil"), io.BytesIO(b"x"))

            await session.mkdir("a/b", parents=True)
            await session.write(Path("a/b/one.txt"), io.BytesIO(b"1"))
            await session.mv("a/b/one.txt", "a/two.txt")
            listing = {entry.path: entry.is_dir() for entry in await session.ls("a")}
            assert listing == {f"{ROOT}/a/b": True, f"{ROOT}/a/two.txt": False}
            await session.rm("a", recursive=True)
            with pytest.raises(WorkspaceReadNotFoundError):
                await session.read(Path("a/two.txt"))

            stuck = await session.pty_exec_start("sleep 60", tty=True, timeout=1, yield_time_s=10)
            assert stuck.process_id is None and stuck.exit_code not in (None, 0), stuck
            assert b"ran longer than 1 s" in stuck.output
            with pytest.raises(PtySessionNotFoundError):
                await session.pty_write_stdin(session_id=12345, chars="x")

            endpoint = await session.resolve_exposed_port(8080)
            assert endpoint.host == f"8080-{state.sandbox_id}.{PORTS_DOMAIN}" and not endpoint.tls
            assert endpoint.query.startswith("ember_token=")
            with pytest.raises(ExposedPortUnavailableError) as port:
                await session.resolve_exposed_port(9999)
            assert port.value.context["reason"] == "not_configured"

            # The sandbox vanishes under the session: a transport error, not a command result.
            outside = await AsyncSandbox.connect(state.sandbox_id, **connection)
            await outside.kill()
            await outside.close()
            with pytest.raises(ExecTransportError) as lost:
                await session.exec("true")
            assert lost.value.context["code"] in ("sandbox_not_running", "sandbox_not_found")
        finally:
            await session.shutdown()
        assert not await is_running(daemon, state.sandbox_id)

        check = ScriptedModel(
            [
                shell("check", "cat kept.txt; pgrep -x sleep >/dev/null && echo alive"),
                [assistant_message("ok")],
            ]
        )
        third = await run(
            SandboxAgent(name="keeper", model=check), SandboxRunConfig(client=client, session_state=state)
        )
        checked = str(tool_outputs(third)["check"])
        # The process survived the kill: the sandbox came back from the Ember snapshot, not from a tar.
        assert "kept" in checked and "alive" in checked, checked
        resumed = saved_state(client, third)
        ember_snapshots.add(resumed.ember_snapshot_id)
        assert resumed.sandbox_id != state.sandbox_id
        assert not await is_running(daemon, resumed.sandbox_id)
        left = {info.id for info in await AsyncSandbox.list_snapshots(**connection)}
        assert left & ember_snapshots == {resumed.ember_snapshot_id}  # a session keeps one snapshot
    finally:
        if await is_running(daemon, state.sandbox_id):
            sandbox = await AsyncSandbox.connect(state.sandbox_id, **connection)
            await sandbox.kill()
            await sandbox.close()
        for snapshot_id in ember_snapshots - {None}:
            with contextlib.suppress(errors.SnapshotNotFoundError):
                await AsyncSandbox.delete_snapshot(snapshot_id, **connection)
