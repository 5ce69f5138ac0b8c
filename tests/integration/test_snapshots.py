"""Snapshots, restores and forks of real microVMs: state carries over, identities do not."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ember import errors
from ember.engine import SandboxManager, SandboxState

pytestmark = pytest.mark.integration


async def value(sandbox, expression: str) -> str:
    execution = await sandbox.code.run(f"print({expression})")
    assert execution.error is None, execution.error
    return execution.stdout.strip()


async def test_restore_brings_back_repl_open_files_processes_and_disk(sandbox_factory, manager):
    source = await sandbox_factory()
    await source.code.run("answer = 41\nlog = open('/tmp/log.txt', 'w')\nlog.write('before ')")
    await source.files.write("/app/data.txt", b"on disk")
    pid = await source.commands.start("while true; do sleep 0.2; done", tag="ticker")

    snapshot = await manager.snapshot(source.id, metadata={"step": "one"})
    assert snapshot.metadata == {"step": "one"}
    assert Path(snapshot.directory, "memory").exists() and snapshot.size_bytes > 0

    # The source runs on after the snapshot; what it changes now is not in the snapshot.
    await source.code.run("answer = 0")
    await source.files.write("/app/data.txt", b"changed")
    assert await value(source, "answer") == "0"

    restored = await sandbox_factory(snapshot=snapshot.id)
    assert restored.id != source.id and restored.hostname != source.hostname
    assert restored.record.vcpus == source.record.vcpus
    assert await value(restored, "answer") == "41"
    await restored.code.run("log.write('after'); log.close()")
    assert await restored.files.read("/tmp/log.txt") == b"before after"
    assert await restored.files.read("/app/data.txt") == b"on disk"
    processes = {p.pid: p for p in await restored.commands.list()}
    assert pid in processes and processes[pid].tag == "ticker" and processes[pid].running
    # Its new name everywhere a program looks: the kernel, /etc/hostname, name lookups.
    names = await restored.commands.run(
        "hostname; cat /etc/hostname; getent hosts $(hostname) >/dev/null && echo resolves"
    )
    assert names.stdout.split() == [restored.hostname, restored.hostname, "resolves"], names
    # And the source still has its own state.
    assert await value(source, "answer") == "0"
    assert await source.files.read("/app/data.txt") == b"changed"


async def test_fork_gives_independent_copies_with_fresh_identity(sandbox_factory, manager):
    source = await sandbox_factory()
    await source.code.run("import random, os\nseen = 'source state'")
    await source.files.write("/app/shared.txt", b"from the source")

    started = time.perf_counter()
    forks = await manager.fork(source.id, 2)
    print(f"\nfork(2) of a booted sandbox: {time.perf_counter() - started:.3f} s")
    try:
        assert len({f.id for f in forks} | {source.id}) == 3
        assert len({f.hostname for f in forks} | {source.hostname}) == 3
        draws = set()
        for sandbox in (source, *forks):
            assert await value(sandbox, "seen") == "source state"
            draws.add(await value(sandbox, "(os.urandom(16).hex(), random.random())"))
            guest_time = float(await value(sandbox, "__import__('time').time()"))
            assert abs(guest_time - time.time()) < 5
        assert len(draws) == 3, "forks drew the same random numbers"
        bash_draws = {(await f.code.run("echo $RANDOM", language="bash")).stdout for f in forks}
        assert len(bash_draws) == 2

        # Each writes only its own disk.
        await forks[0].files.write("/app/shared.txt", b"fork 0 wrote this")
        assert await forks[1].files.read("/app/shared.txt") == b"from the source"
        assert await source.files.read("/app/shared.txt") == b"from the source"
        assert all(f.record.metadata["forked_from"] == source.id for f in forks)
    finally:
        for sandbox in forks:
            await manager.destroy(sandbox.id)
    # The snapshot taken for the fork goes with its last fork.
    assert manager.snapshots.list(kind="fork") == []
    assert not any(s.kind == "fork" for s in manager.store.snapshots(include_deleted=True))


async def test_restores_and_forks_after_a_large_transfer_move_files_on_their_own_transfer_disks(
    sandbox_factory, manager
):
    source = await sandbox_factory()
    data = os.urandom(12 * 1024 * 1024)
    await source.files.write("/app/big.bin", data)
    assert await source.files.read("/app/big.bin") == data
    snapshot = await manager.snapshot(source.id)
    restored = await sandbox_factory(snapshot=snapshot.id)
    (fork,) = await manager.fork(source.id, 1)
    try:
        for sandbox in (restored, fork, source):
            assert sandbox.vm.transfer_disk != source.vm.transfer_disk or sandbox is source
            assert await sandbox.files.read("/app/big.bin") == data
            own = os.urandom(5 * 1024 * 1024)
            await sandbox.files.write("/app/own.bin", own)
            assert await sandbox.files.read("/app/own.bin") == own
    finally:
        await manager.destroy(fork.id)


async def test_a_restored_sandbox_can_be_snapshotted_and_forked_again(sandbox_factory, manager):
    source = await sandbox_factory()
    await source.code.run("generation = 1")
    first = await manager.snapshot(source.id)
    child = await sandbox_factory(snapshot=first.id)
    await child.code.run("generation = 2")
    await child.files.write("/app/child.txt", b"child")

    spares = manager.snapshots.spares
    started = time.perf_counter()
    second = await manager.snapshot(child.id)
    print(f"\nsnapshot of a restored sandbox: {time.perf_counter() - started:.3f} s")
    assert await value(child, "generation") == "2"  # it ran on
    # Its next snapshot starts from a spare copy of the image it maps, made meanwhile.
    assert child.record.memory_file in spares.held()
    for _ in range(300):
        if spares.ready(child.record.memory_file):
            break
        await asyncio.sleep(0.1)
    taken = spares.taken
    grandchildren = await manager.fork(child.id, 1)
    assert spares.taken == taken + 1, "the fork did not take the spare"
    grandchild = await sandbox_factory(snapshot=second.id)
    try:
        for sandbox in (grandchild, *grandchildren):
            assert await value(sandbox, "generation") == "2"
            assert await sandbox.files.read("/app/child.txt") == b"child"
    finally:
        for sandbox in grandchildren:
            await manager.destroy(sandbox.id)
    # The spare made after the fork goes with the image it copies.
    await manager.destroy(child.id)
    await manager.delete_snapshot(first.id)
    assert child.record.memory_file not in spares.held()


async def test_restored_sandboxes_never_write_the_snapshot_memory_file(sandbox_factory, manager):
    source = await sandbox_factory()
    snapshot = await manager.snapshot(source.id)
    files = sorted(Path(snapshot.directory).iterdir())
    assert [f.name for f in files] == ["memory", "overlay.qcow2", "state"]
    assert all(f.stat().st_mode & 0o777 == 0o444 for f in files), "snapshot files are written read-only"
    blank = Path(snapshot.directory, "overlay.qcow2").read_bytes()
    memory = Path(snapshot.directory, "memory")
    before = memory.stat()
    restored = await sandbox_factory(snapshot=snapshot.id)
    # Its disk is a copy of the snapshot's blank overlay, which it writes on its own.
    assert (await restored.commands.run("echo own > /app/own.txt && sync")).exit_code == 0
    assert Path(snapshot.directory, "overlay.qcow2").read_bytes() == blank
    # Touch and free a lot of memory, as a package install does, and give the guest time to report it.
    freed = await restored.code.run(
        "x = bytearray(200 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\ndel x"
    )
    assert freed.error is None, freed.error
    await restored.commands.run("sync; echo 3 > /proc/sys/vm/drop_caches; sleep 3")
    after = memory.stat()
    assert (after.st_mtime_ns, after.st_blocks, after.st_size) == (
        before.st_mtime_ns,
        before.st_blocks,
        before.st_size,
    )


async def test_deleted_snapshot_files_go_with_the_last_sandbox_that_maps_them(sandbox_factory, manager):
    source = await sandbox_factory()
    snapshot = await manager.snapshot(source.id)
    restored = await manager.create(snapshot=snapshot.id)
    await manager.delete_snapshot(snapshot.id)
    with pytest.raises(errors.SnapshotNotFoundError):
        await manager.create(snapshot=snapshot.id)
    assert snapshot.id not in {s.id for s in manager.list_snapshots()}
    assert Path(snapshot.directory).exists(), "deleted under a running restore"
    assert await value(restored, "1 + 1") == "2"
    await manager.destroy(restored.id)
    assert not Path(snapshot.directory).exists()


async def test_bad_snapshot_and_fork_requests_change_nothing(sandbox_factory, manager: SandboxManager):
    source = await sandbox_factory()
    for count in (0, 17, True, "2"):
        with pytest.raises(errors.InvalidRequestError):
            await manager.fork(source.id, count)  # type: ignore[arg-type]
    with pytest.raises(errors.SandboxNotFoundError):
        await manager.snapshot("nope")
    with pytest.raises(errors.SnapshotNotFoundError):
        await manager.create(snapshot="0123456789abcdef")
    with pytest.raises(errors.InvalidRequestError):
        await manager.snapshot(source.id, metadata={"k": 1})  # type: ignore[dict-item]
    snapshot = await manager.snapshot(source.id)
    with pytest.raises(errors.SnapshotNotFoundError):
        await manager.create(snapshot=snapshot.id, owner="someone else")
    # Images that changed under a snapshot: refused, never a hang.
    for changed in (replace(snapshot, kernel="/nonexistent/vmlinux"), replace(snapshot, machine="older")):
        manager.store.save_snapshot(changed)
        with pytest.raises(errors.SnapshotIncompatibleError):
            await manager.create(snapshot=snapshot.id)
    await manager.delete_snapshot(snapshot.id)
    assert source.state is SandboxState.RUNNING
    assert await value(source, "'still fine'") == "still fine"


async def test_a_snapshot_that_fills_the_disk_fails_cleanly(test_settings) -> None:
    # A manager of its own, whose snapshot directory is a 1 MiB tmpfs: the memory copy cannot fit.
    data_dir = Path(tempfile.mkdtemp(prefix="ember-full-"))
    run_dir = Path(tempfile.mkdtemp(prefix="ember-full-", dir="/dev/shm"))
    (data_dir / "images").symlink_to(test_settings.images_dir.resolve())
    (data_dir / "snapshots").mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data_dir / "snapshots")], check=True
    )
    manager = SandboxManager(replace(test_settings, data_dir=data_dir, run_dir=run_dir, pool=()))
    try:
        source = await manager.create(vcpus=1, memory_mb=256)
        await source.code.run("kept = 'yes'")
        with pytest.raises(errors.DiskFullError) as caught:
            await manager.snapshot(source.id)
        assert caught.value.code == "disk_full"
        assert manager.list_snapshots() == [] and list((data_dir / "snapshots").iterdir()) == []
        assert await value(source, "kept") == "yes"
        await source.files.write("/app/after.txt", b"still writable")
        assert await source.files.read("/app/after.txt") == b"still writable"
    finally:
        await manager.close()
        subprocess.run(["umount", str(data_dir / "snapshots")], check=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_a_resume_racing_the_end_of_its_pause_waits_for_it(sandbox_factory, manager):
    # The paused snapshot exists before the old VM's teardown is over. A resume under
    # the same id in that window must not have the old teardown delete its new run
    # directory (E2B clients see "paused" and connect at once).
    sandbox = await sandbox_factory()
    await sandbox.code.run("kept = 'still here'")
    pausing = asyncio.create_task(manager.pause(sandbox.id))
    while manager.paused_snapshot(sandbox.id) is None:
        assert not pausing.done() or pausing.exception() is None
        await asyncio.sleep(0.001)
    resumed = await manager.resume(sandbox.id)
    await pausing
    try:
        assert resumed.id == sandbox.id and resumed.state is SandboxState.RUNNING
        assert await value(resumed, "kept") == "still here"
        assert Path(resumed.record.run_dir, "qmp.sock").exists()
    finally:
        await manager.destroy(resumed.id)


@pytest.mark.parametrize("restored", [False, True], ids=["booted", "restored"])
async def test_forks_of_a_source_busy_on_its_agent_channel_come_up_whole(sandbox_factory, manager, restored):
    # A paused VM's virtio-serial still writes what the host sends into guest
    # buffers: requests that arrive while the source is paused for the fork must
    # not leave the forks' memory and devices out of step.
    source = await sandbox_factory()
    await source.code.run("n = 0\nbig = bytes(8 << 20)")
    if restored:
        snapshot = await manager.snapshot(source.id)
        source = await sandbox_factory(snapshot=snapshot.id)
    stop = asyncio.Event()

    async def traffic(path: str) -> int:
        calls = 0
        while not stop.is_set():
            await source.files.write(path, b"x" * 65536)
            assert (await source.commands.run(f"wc -c < {path}")).stdout == "65536\n"
            calls += 1
        return calls

    busy = [asyncio.create_task(traffic(f"/tmp/traffic{n}")) for n in range(3)]
    try:
        for _ in range(3):
            (child,) = await manager.fork(source.id, 1)
            try:
                assert await value(child, "len(big)") == str(8 << 20)
                assert (await child.commands.run("echo alive")).stdout == "alive\n"
            finally:
                await manager.destroy(child.id)
    finally:
        stop.set()
        calls = await asyncio.gather(*busy)
    assert all(calls)
    assert await value(source, "len(big)") == str(8 << 20)


async def test_template_base_is_rebuilt_for_another_kernel_command_line(manager, monkeypatch):
    base = await manager.ensure_base_template()
    made = []
    try:
        assert base.kernel_args == manager.driver.kernel_args
        assert await manager.ensure_base_template() == base  # current: kept
        made.append(await manager.create())
        assert made[-1].record.snapshot_id == base.id  # a plain create resumes it
        monkeypatch.setattr(manager.driver, "kernel_args", manager.driver.kernel_args + " quiet")
        made.append(await manager.create())
        assert made[-1].record.snapshot_id is None  # booted: base was made with other arguments
        assert (await manager.ensure_base_template()).id != base.id
    finally:
        for sandbox in made:
            await manager.destroy(sandbox.id)
        await manager.delete_template("base")
