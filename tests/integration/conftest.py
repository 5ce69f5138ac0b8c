"""Real microVMs for integration tests: one factory makes them, tracks them, ends them.

Every VM a test makes is destroyed at teardown, and the teardown checks that its
QEMU process, run directory and disk are gone. On failure the guest console is
attached to the test report. A session-wide check fails the run if any QEMU
process of this run outlived the tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ember.engine import Sandbox, SandboxManager
from ember.images import ensure_guest_images
from ember.settings import Settings
from leaks import jail_leftovers, qemu_pids_under, sandbox_networks_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def test_settings() -> Settings:
    base = Settings.from_env()
    # Fast when built (and a few seconds after an agent edit); setup builds the rest.
    ensure_guest_images(base)
    run_dir = Path(tempfile.mkdtemp(prefix="ember-test-", dir="/dev/shm"))
    data_dir = Path(tempfile.mkdtemp(prefix="ember-test-data-"))
    # Share the built images; keep everything a sandbox makes in this run's own dirs.
    (data_dir / "images").symlink_to(base.images_dir)
    settings = replace(base, run_dir=run_dir, data_dir=data_dir)
    yield settings
    leaked = qemu_pids_under(run_dir)
    networks = sandbox_networks_of(data_dir)
    jails = jail_leftovers(data_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    assert not leaked, f"QEMU processes outlived the test session: {leaked}"
    assert not networks, f"sandbox networks outlived the test session: {networks}"
    assert not jails, f"cgroups or uid claims outlived the test session: {jails}"


@pytest.fixture(scope="session")
async def manager(test_settings: Settings) -> AsyncIterator[SandboxManager]:
    engine = SandboxManager(test_settings)
    yield engine
    kept = {Path(layer).name for s in engine.store.snapshots(include_deleted=True) for layer in s.disk_chain}
    await engine.close()
    stray = {p.name for p in engine.layers.directory.iterdir()} - kept
    assert not stray, f"disk layers that no snapshot holds were left behind: {stray}"


@pytest.fixture
async def own_manager(test_settings: Settings) -> AsyncIterator:
    """Makes a manager with other settings, in directories of its own, and ends it after the test."""
    made: list[SandboxManager] = []
    directories: list[Path] = []
    mounts: list[Path] = []

    async def make(data_disk_mib: int | None = None, **changes: object) -> SandboxManager:
        """``data_disk_mib``: the data directory is a filesystem of that size of its own."""
        data_dir = Path(tempfile.mkdtemp(prefix="ember-own-"))
        run_dir = Path(tempfile.mkdtemp(prefix="ember-own-", dir="/dev/shm"))
        directories.extend((data_dir, run_dir))
        if data_disk_mib is not None:  # an ext4 of its own on a loop device (not tmpfs: a VMM's
            # writes to tmpfs are charged to its cgroup's memory)
            image = data_dir.with_suffix(".ext4")
            directories.append(image)
            with image.open("wb") as disk:
                disk.truncate(data_disk_mib << 20)
            # 5% for root, as Debian makes ext4: jailed VMMs stop short of it, the daemon does not.
            subprocess.run(["mkfs.ext4", "-q", "-m", "5", image], check=True)
            subprocess.run(["mount", "-o", "loop", image, data_dir], check=True)
            mounts.append(data_dir)
        (data_dir / "images").symlink_to(test_settings.images_dir.resolve())
        settings = replace(test_settings, data_dir=data_dir, run_dir=run_dir, pool=(), **changes)
        manager = SandboxManager(settings)
        await manager.start()
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()
        assert qemu_pids_under(manager.settings.run_dir) == []
    for mount in mounts:
        subprocess.run(["umount", mount], check=True)
    for directory in directories:
        if directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
        else:
            directory.unlink(missing_ok=True)


SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def sandbox_factory(
    manager: SandboxManager, request: pytest.FixtureRequest
) -> AsyncIterator[SandboxFactory]:
    made: list[Sandbox] = []

    async def make(**kwargs: object) -> Sandbox:
        kwargs.setdefault("vcpus", 1)
        kwargs.setdefault("memory_mb", 512)
        sandbox = await manager.create(**kwargs)  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield make
    # Every sandbox is ended even when ending one fails; the failures are reported together.
    problems = []
    for sandbox in made:
        _attach_console(request, sandbox)
        try:
            await _end_and_check(manager, sandbox)
        except Exception as exc:
            problems.append(f"{sandbox.id}: {exc!r}")
    assert not problems, "sandboxes did not end cleanly:\n" + "\n".join(problems)


async def _end_and_check(manager: SandboxManager, sandbox: Sandbox) -> None:
    pid = sandbox.vm.pid
    if sandbox.id in {s.id for s in manager.list(include_ended=True)}:
        await manager.destroy(sandbox.id)
    else:
        await sandbox.destroy()
    assert not sandbox.vm.spec.run_dir.exists(), "run directory left behind"
    assert not Path(sandbox.record.disk_chain[0]).exists(), "the sandbox's disk layer left behind"
    if pid is not None:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"QEMU {pid} still running"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _attach_console(request: pytest.FixtureRequest, sandbox: Sandbox) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("call", f"console of {sandbox.id}", sandbox.vm.console_tail(16384))


@pytest.fixture(scope="module")
async def shared_sandbox(manager: SandboxManager) -> AsyncIterator[Sandbox]:
    """One sandbox for a module's tests that only add state of their own."""
    sandbox = await manager.create(vcpus=2, memory_mb=512, env={"MODE": "test"})
    yield sandbox
    await manager.destroy(sandbox.id)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


__all__ = ["SandboxFactory", "os", "wait_for"]
