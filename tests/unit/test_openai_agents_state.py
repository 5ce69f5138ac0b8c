"""The OpenAI Agents integration's pure parts: options and state round trips, error mapping, listings."""

from __future__ import annotations

import json
import stat

import pytest
from agents.sandbox import Manifest
from agents.sandbox.errors import ExecTimeoutError, ExecTransportError
from agents.sandbox.files import EntryKind
from agents.sandbox.session.sandbox_client import BaseSandboxClientOptions
from agents.sandbox.snapshot import LocalSnapshot

from ember import errors
from ember.client import FileInfo
from ember.integrations.openai_agents import (
    EmberSandboxClient,
    EmberSandboxClientOptions,
    EmberSandboxSessionState,
)
from ember.integrations.openai_agents._errors import raise_exec_error
from ember.integrations.openai_agents.session import _file_entry, _split_user


def test_options_parse_back_by_their_type_literal() -> None:
    options = EmberSandboxClientOptions(template="data", env={"A": "1"}, keep_alive=True)
    payload = json.loads(options.model_dump_json())
    assert payload["type"] == "ember"
    assert BaseSandboxClientOptions.parse(payload) == options


def test_sandbox_spec_restores_a_snapshot_instead_of_the_template() -> None:
    options = EmberSandboxClientOptions(template="data", vcpus=1, timeout=60)
    assert options.sandbox_spec()["template"] == "data"
    restored = options.sandbox_spec("snap-1")
    assert restored["snapshot"] == "snap-1" and "template" not in restored
    assert (restored["vcpus"], restored["timeout"], restored["env"]) == (1, 60, None)


def test_options_refuse_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        EmberSandboxClientOptions(vcpus=0)
    with pytest.raises(ValueError):
        EmberSandboxClientOptions(workspace_persistence="zip")  # type: ignore[arg-type]


def test_session_state_survives_json_through_the_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = EmberSandboxClient(base_url="http://127.0.0.1:1", api_key="k")
    state = EmberSandboxSessionState(
        manifest=Manifest(root="/workspace"),
        snapshot=LocalSnapshot(id="s1", base_path=tmp_path),
        sandbox_id="abc123",
        options=EmberSandboxClientOptions(workspace_persistence="snapshot", metadata={"team": "x"}),
        ember_snapshot_id="snap-9",
    )
    payload = json.loads(json.dumps(client.serialize_session_state(state)))
    assert "api_key" not in json.dumps(payload)  # credentials stay with the client
    restored = client.deserialize_session_state(payload)
    assert isinstance(restored, EmberSandboxSessionState)
    assert (restored.sandbox_id, restored.ember_snapshot_id) == ("abc123", "snap-9")
    assert restored.options == state.options and restored.session_id == state.session_id
    assert isinstance(restored.snapshot, LocalSnapshot)


def test_ember_errors_become_the_sdk_exec_errors() -> None:
    with pytest.raises(ExecTimeoutError) as timed_out:
        raise_exec_error(errors.ExecTimeoutError("slow"), command=["sleep", "9"], timeout_s=1)
    assert timed_out.value.timeout_s == 1
    with pytest.raises(ExecTransportError) as gone:
        raise_exec_error(errors.SandboxNotFoundError("gone"), command=["true"], timeout_s=None)
    assert gone.value.context["code"] == "sandbox_not_found" and gone.value.retryable is False
    with pytest.raises(ExecTransportError) as busy:
        raise_exec_error(errors.AgentUnavailableError("restarting"), command=["true"], timeout_s=None)
    assert busy.value.retryable is True


def test_the_sdk_sudo_prefix_becomes_an_ember_user() -> None:
    assert _split_user(["sudo", "-u", "agent", "--", "sh", "-lc", "id"]) == (["sh", "-lc", "id"], "agent")
    assert _split_user(["sh", "-lc", "sudo -u x -- id"]) == (["sh", "-lc", "sudo -u x -- id"], None)


def test_file_infos_become_sdk_entries() -> None:
    info = FileInfo(path="/w/d", name="d", type="dir", size=4096, mode=0o750, mtime=0.0, owner="a", group="b")
    entry = _file_entry(info)
    assert entry.is_dir() and entry.permissions.to_mode() == stat.S_IFDIR | 0o750
    link = _file_entry(FileInfo("/w/l", "l", "symlink", 3, 0o777, 0.0, "a", "b", symlink_target="x"))
    assert link.kind is EntryKind.SYMLINK and not link.is_dir()
