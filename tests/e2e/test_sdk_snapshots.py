"""Snapshots, forks and templates through the SDK and the CLI, against a real daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import Daemon, SandboxFactory, run_cli

from ember import InvalidRequestError, Sandbox
from ember.client import Step, build_template
from ember.errors import EmberError, SnapshotNotFoundError, TemplateBuildFailedError, TemplateNotFoundError


def test_snapshot_restore_and_fork_through_the_sdk(daemon: Daemon, sandbox_factory: SandboxFactory) -> None:
    source = sandbox_factory()
    source.run_code("counter = 10")
    source.files.write("/app/note.txt", "kept")
    snapshot = source.snapshot(metadata={"why": "test"})
    assert snapshot.kind == "snapshot" and snapshot.metadata == {"why": "test"}
    assert snapshot.id in {s.id for s in Sandbox.list_snapshots(base_url=daemon.url, api_key=daemon.api_key)}

    restored = sandbox_factory(snapshot=snapshot.id)
    assert restored.run_code("counter += 1; counter").results[0].text == "11"
    assert restored.files.read("/app/note.txt") == b"kept"
    assert restored.info().snapshot == snapshot.id

    forks = source.fork(2)
    try:
        assert [f.run_code("counter").results[0].text for f in forks] == ["10", "10"]
        assert len({f.id for f in forks} | {source.id}) == 3
    finally:
        for copy in forks:
            copy.close()
    assert all(
        f.id not in {s.id for s in Sandbox.list(base_url=daemon.url, api_key=daemon.api_key)} for f in forks
    )
    assert source.run_code("counter").results[0].text == "10"

    Sandbox.delete_snapshot(snapshot.id, base_url=daemon.url, api_key=daemon.api_key)
    with pytest.raises(SnapshotNotFoundError) as caught:
        sandbox_factory(snapshot=snapshot.id)
    assert caught.value.code == "snapshot_not_found"
    with pytest.raises(InvalidRequestError):
        source.fork(0)


def test_template_build_runs_steps_and_starts_sandboxes_warm(
    daemon: Daemon, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "helper.py").write_text("GREETING = 'hello from the template'\n")
    heard: list[str] = []
    info = build_template(
        "e2e-tools",
        [
            Step(copy=(str(tmp_path / "pkg"), "/opt/pkg")),
            Step(run="echo building; echo 'export BUILT=yes' >> /etc/profile.d/built.sh"),
            Step(run="python3 -c 'import sys; sys.path.insert(0, \"/opt/pkg\"); import helper'"),
        ],
        env={"STAGE": "template"},
        on_output=heard.append,
        base_url=daemon.url,
        api_key=daemon.api_key,
    )
    assert info.kind == "template" and info.name == "e2e-tools"
    assert "building\n" in "".join(heard)
    assert "e2e-tools" in {
        t.name for t in Sandbox.list_templates(base_url=daemon.url, api_key=daemon.api_key)
    }
    sandbox = sandbox_factory(template="e2e-tools")
    execution = sandbox.run_code(
        "import sys, os; sys.path.insert(0, '/opt/pkg'); import helper; helper.GREETING"
    )
    assert execution.results[0].text == "'hello from the template'"
    assert sandbox.run_code("os.environ['STAGE']").results[0].text == "'template'"
    assert sandbox.info().template == "e2e-tools"

    # A failing step: its output in the error, no template left, no sandbox left.
    with pytest.raises(TemplateBuildFailedError) as caught:
        build_template(
            "e2e-broken",
            [Step(run="echo about to fail; exit 3")],
            base="e2e-tools",
            base_url=daemon.url,
            api_key=daemon.api_key,
        )
    assert "status 3" in caught.value.message and "about to fail" in caught.value.message
    assert "e2e-broken" not in {
        t.name for t in Sandbox.list_templates(base_url=daemon.url, api_key=daemon.api_key)
    }
    assert not [
        s
        for s in Sandbox.list(base_url=daemon.url, api_key=daemon.api_key)
        if s.metadata.get("template_build")
    ]
    with pytest.raises(TemplateNotFoundError):
        sandbox_factory(template="no-such-template")
    with pytest.raises(EmberError) as bad_name:
        build_template("Bad Name!", [], base_url=daemon.url, api_key=daemon.api_key)
    assert bad_name.value.code == "invalid_request"
    Sandbox.delete_template("e2e-tools", base_url=daemon.url, api_key=daemon.api_key)


def test_cli_snapshot_fork_and_template(daemon: Daemon, sandbox_factory: SandboxFactory) -> None:
    source = sandbox_factory()
    source.run_code("marker = 'cli'")
    created = run_cli(daemon, "snapshot", "create", source.id)
    assert created.returncode == 0, created.stderr
    snapshot_id = created.stdout.strip()
    listed = run_cli(daemon, "snapshot", "ls", "--json")
    assert snapshot_id in listed.stdout

    forked = run_cli(daemon, "fork", source.id, "-n", "2")
    assert forked.returncode == 0, forked.stderr
    fork_ids = forked.stdout.split()
    assert len(fork_ids) == 2
    for fork_id in fork_ids:
        with Sandbox.connect(fork_id, base_url=daemon.url, api_key=daemon.api_key) as copy:
            assert copy.run_code("marker").results[0].text == "'cli'"
            copy.kill()

    built = run_cli(daemon, "template", "build", "e2e-cli", "--run", "echo step-output", "--env", "A=b")
    assert built.returncode == 0, built.stderr
    assert "step-output" in built.stdout and "==> step 1/1" in built.stderr
    assert "e2e-cli" in run_cli(daemon, "template", "ls").stdout
    removed = run_cli(daemon, "template", "rm", "e2e-cli")
    assert removed.returncode == 0, removed.stderr
    failed = run_cli(daemon, "template", "build", "e2e-cli-bad", "--run", "false")
    assert failed.returncode == 1 and "template_build_failed" in failed.stderr
    assert run_cli(daemon, "snapshot", "rm", snapshot_id).returncode == 0
    missing = run_cli(daemon, "snapshot", "rm", snapshot_id)
    assert missing.returncode == 1 and "snapshot_not_found" in missing.stderr
    pools = json.loads(run_cli(daemon, "pool", "--json").stdout)
    assert {p["template"]: p["target"] for p in pools} == {"base": 2}
    assert "TEMPLATE" in run_cli(daemon, "pool").stdout
