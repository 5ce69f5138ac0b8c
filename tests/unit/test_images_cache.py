"""The artifact cache: keys, one build per key, atomic publish, stale and live builds."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ember.images import BuildFailed, BuildProgress
from ember.images._workspace import Workspace
from ember.images.cache import ArtifactCache, ArtifactKey


def _write_artifact(workspace: Workspace) -> None:
    (workspace.out / "artifact").write_text("built")
    (workspace.scratch / "big-intermediate").write_text("x")


def test_key_digest_is_stable_and_independent_of_input_order() -> None:
    first = ArtifactKey("kernel", {"a": "1", "b": "2"})
    second = ArtifactKey("kernel", {"b": "2", "a": "1"})
    assert first.name == second.name
    assert first.name.startswith("kernel-")


@pytest.mark.parametrize(
    "changed",
    [
        ArtifactKey("kernel", {"a": "1", "b": "3"}),
        ArtifactKey("kernel", {"a": "1"}),
        ArtifactKey("kernel", {"a": "1", "b": "2", "c": ""}),
        ArtifactKey("rootfs", {"a": "1", "b": "2"}),
    ],
)
def test_key_digest_changes_when_any_input_changes(changed: ArtifactKey) -> None:
    assert ArtifactKey("kernel", {"a": "1", "b": "2"}).name != changed.name


def test_ensure_builds_once_then_returns_the_published_artifact(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    key = ArtifactKey("thing", {"v": "1"})
    calls = []

    def build(workspace: Workspace) -> None:
        calls.append(1)
        _write_artifact(workspace)

    first = cache.ensure(key, build, BuildProgress())
    second = cache.ensure(key, build, BuildProgress())
    assert first == second == tmp_path / key.name
    assert len(calls) == 1
    assert (first / "artifact").read_text() == "built"
    assert (first / "inputs.json").is_file()
    assert not (first / "big-intermediate").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_failed_build_publishes_nothing_and_the_next_build_cleans_up(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    key = ArtifactKey("thing", {"v": "1"})

    def failing(workspace: Workspace) -> None:
        (workspace.out / "half").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.ensure(key, failing, BuildProgress())
    assert cache.lookup(key) is None
    assert (tmp_path / f".tmp-{key.name}" / "out" / "half").exists()
    assert not (tmp_path / f".tmp-{key.name}" / "scratch").exists()

    published = cache.ensure(key, _write_artifact, BuildProgress())
    assert not (published / "half").exists()
    assert not (tmp_path / f".tmp-{key.name}").exists()


def test_stale_temp_dirs_of_other_artifacts_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-kernel-0123" / "out"
    stale.mkdir(parents=True)
    ArtifactCache(tmp_path).ensure(ArtifactKey("thing", {}), _write_artifact, BuildProgress())
    assert not stale.parent.exists()


def _hold_lock(lock_path: str, ready: multiprocessing.synchronize.Event, seconds: float) -> None:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    time.sleep(seconds)


def test_temp_dir_of_a_live_build_is_left_alone(tmp_path: Path) -> None:
    live = tmp_path / ".tmp-kernel-0123"
    (live / "out").mkdir(parents=True)
    (tmp_path / ".locks").mkdir()
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(
        target=_hold_lock, args=(str(tmp_path / ".locks/kernel-0123.lock"), ready, 30)
    )
    holder.start()
    try:
        assert ready.wait(10)
        ArtifactCache(tmp_path).remove_stale()
        assert live.exists()
    finally:
        holder.kill()
        holder.join()
    ArtifactCache(tmp_path).remove_stale()
    assert not live.exists()


def _build_in_child(root: str, counter: str) -> None:
    def slow_build(workspace: Workspace) -> None:
        with open(counter, "a") as file:
            file.write("built\n")
        time.sleep(0.5)
        _write_artifact(workspace)

    ArtifactCache(Path(root)).ensure(ArtifactKey("thing", {"v": "1"}), slow_build, BuildProgress())


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    root = tmp_path / "cache"
    children = [
        multiprocessing.Process(target=_build_in_child, args=(str(root), str(counter))) for _ in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert counter.read_text() == "built\n"
    assert (root / ArtifactKey("thing", {"v": "1"}).name / "artifact").read_text() == "built"


def test_killed_builder_leaves_no_artifact_and_is_cleaned_next_time(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ember.images import BuildProgress\n"
        "from ember.images.cache import ArtifactCache, ArtifactKey\n"
        "def build(workspace):\n"
        "    (workspace.out / 'partial').write_text('x')\n"
        "    print('building', flush=True)\n"
        "    workspace.run(['sleep', '60'])\n"
        "cache = ArtifactCache(Path(sys.argv[1]))\n"
        "cache.ensure(ArtifactKey('thing', {}), build, BuildProgress())\n"
    )
    builder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert builder.stdout is not None
    assert builder.stdout.readline() == "building\n"
    time.sleep(0.3)  # let the sleep child start
    builder.kill()
    builder.wait()
    key = ArtifactKey("thing", {})
    assert ArtifactCache(tmp_path).lookup(key) is None
    # The orphaned `sleep` got SIGTERM from its parent-death signal and released the lock.
    deadline = time.monotonic() + 10
    while (tmp_path / f".tmp-{key.name}").exists() and time.monotonic() < deadline:
        ArtifactCache(tmp_path).remove_stale()
        time.sleep(0.1)
    assert not (tmp_path / f".tmp-{key.name}").exists()


def test_force_replaces_the_published_artifact(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    key = ArtifactKey("thing", {})
    cache.ensure(key, _write_artifact, BuildProgress())

    def rebuild(workspace: Workspace) -> None:
        (workspace.out / "artifact").write_text("rebuilt")

    path = cache.ensure(key, rebuild, BuildProgress(), force=True)
    assert (path / "artifact").read_text() == "rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", key.name]


def test_failing_command_reports_log_tail_and_path(tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    lines: list[str] = []

    class Recorder(BuildProgress):
        def log(self, line: str) -> None:
            lines.append(line)

    workspace = Workspace(out, scratch, Recorder())
    with pytest.raises(BuildFailed) as failure:
        workspace.run(["sh", "-c", "echo first; echo 'it broke' >&2; exit 3"])
    message = str(failure.value)
    assert "exited with status 3" in message
    assert "it broke" in message
    assert str(out / "build.log") in message
    assert failure.value.log_path == out / "build.log"
    assert lines == ["first", "it broke"]
