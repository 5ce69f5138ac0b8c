"""Every sandbox's VMM runs jailed: its own uid, no capabilities, seccomp, a root of its own, a cgroup."""

from __future__ import annotations

import asyncio
import filecmp
import os
from pathlib import Path

import pytest

from ember import errors
from ember.engine import Sandbox, SandboxManager, SandboxState
from ember.settings import Settings
from ember.vmm import cgroups
from jails import assert_jailed, inspect
from leaks import qemu_pids_under

pytestmark = pytest.mark.integration


async def test_booted_restored_and_forked_vmms_each_run_jailed_as_their_own_user(
    sandbox_factory, manager: SandboxManager
):
    booted = await sandbox_factory()
    await booted.code.run("secret = 'of the source'")
    snapshot = await manager.snapshot(booted.id)
    forks: list[Sandbox] = []
    try:
        restored = await sandbox_factory(snapshot=snapshot.id)
        forks = await manager.fork(restored.id, 2)
        sandboxes = [booted, restored, *forks]
        for sandbox in sandboxes:
            assert_jailed(sandbox)
            # The jail costs nothing that works: the REPL, commands, files, all of it.
            result = await sandbox.code.run("print(secret)")
            assert result.stdout == "of the source\n"
        uids = [inspect(s.vm.pid).uid for s in sandboxes]  # type: ignore[arg-type]
        assert len(set(uids)) == len(uids), "each sandbox has a uid of its own"
        # Neither the state database nor another sandbox's files exist from inside.
        root = Path(f"/proc/{forks[0].vm.pid}/root")
        assert not (root / str(manager.store.path).lstrip("/")).exists()
        assert not (root / str(booted.vm.spec.run_dir).lstrip("/")).exists()
        assert (root / str(forks[0].vm.spec.run_dir).lstrip("/") / "agent.sock").exists()
    finally:
        for fork in forks:
            await manager.destroy(fork.id)
        await manager.delete_snapshot(snapshot.id)


async def test_a_snapshot_freezes_its_disk_layer_read_only_for_everyone(sandbox_factory, manager):
    sandbox = await sandbox_factory()
    top = Path(sandbox.record.disk_chain[0])
    assert top.stat().st_uid == inspect(sandbox.vm.pid).uid and top.stat().st_mode & 0o777 == 0o600
    snapshot = await manager.snapshot(sandbox.id)
    try:
        assert top.stat().st_uid == 0 and top.stat().st_mode & 0o777 == 0o444
        # The source goes on writing its new layer, and a second snapshot freezes that one.
        await sandbox.commands.run("echo after > /app/after")
        second = await manager.snapshot(sandbox.id)
        await manager.delete_snapshot(second.id)
        assert (await sandbox.commands.run("cat /app/after")).stdout == "after\n"
    finally:
        await manager.delete_snapshot(snapshot.id)


async def test_a_vmm_over_its_memory_limit_ends_its_sandbox_with_the_reason(
    own_manager, test_settings: Settings
) -> None:
    # A VMM allowed only 32 MiB beyond its guest's RAM: filling the guest's memory takes it over.
    manager = await own_manager(vmm_overhead_mib=32)
    sandbox = await manager.create(vcpus=1, memory_mb=256)
    try:
        fill = 'python3 -c "b = bytearray(200 << 20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]"'
        with pytest.raises(errors.EmberError):
            await sandbox.commands.run(fill, timeout_s=120)
        for _ in range(100):
            if sandbox.state is SandboxState.DEAD:
                break
            await asyncio.sleep(0.1)
        assert sandbox.state is SandboxState.DEAD
        assert "memory limit" in (sandbox.end_reason or ""), sandbox.end_reason
        await manager.reaper.reap()
        record = manager.record(sandbox.id)
        assert record.state == "dead" and "memory limit" in (record.end_reason or "")
    finally:
        if sandbox.id in {s.id for s in manager.list()}:
            await manager.destroy(sandbox.id)


async def test_an_exhausted_uid_range_refuses_a_create_and_leaves_nothing(own_manager) -> None:
    manager = await own_manager(uid_range=(299_990, 299_990))
    first = await manager.create(vcpus=1, memory_mb=256)
    try:
        with pytest.raises(errors.ResourceExhaustedError) as refused:
            await manager.create(vcpus=1, memory_mb=256)
        assert "EMBER_UID_RANGE" in str(refused.value)
        assert [s.id for s in manager.list()] == [first.id]
        assert sorted(p.name for p in manager.settings.run_dir.iterdir()) == [first.id]
        assert len(qemu_pids_under(manager.settings.run_dir)) == 1
    finally:
        await manager.destroy(first.id)
    # Its uid went back with it.
    second = await manager.create(vcpus=1, memory_mb=256)
    await manager.destroy(second.id)


async def test_a_host_without_a_cgroup_controller_refuses_creates_clearly(own_manager, monkeypatch) -> None:
    def no_pids(instance: str, mounts_file: Path = cgroups.MOUNTS) -> cgroups.CgroupHost:
        raise cgroups.CgroupsUnavailable("cgroup controller pids not mounted")

    monkeypatch.setattr(cgroups.CgroupHost, "detect", staticmethod(no_pids))
    manager = await own_manager()
    assert "pids" in manager.driver.protections()
    with pytest.raises(errors.IsolationUnavailableError) as refused:
        await manager.create(vcpus=1, memory_mb=256)
    assert "pids" in str(refused.value) and "EMBER_JAIL=off" in str(refused.value)
    assert refused.value.code == "isolation_unavailable"
    assert manager.list(include_ended=True) == []
    assert list(manager.settings.run_dir.iterdir()) == []


async def test_the_balloon_works_under_seccomp_and_never_touches_the_snapshot(sandbox_factory, manager):
    booted = await sandbox_factory()
    snapshot = await manager.snapshot(booted.id)
    try:
        restored = await sandbox_factory(snapshot=snapshot.id)
        image = Path(f"/proc/{restored.vm.pid}/fd/3")  # the sealed memfd the restore maps
        for sandbox in (booted, restored):
            await sandbox.vm.qmp("balloon", {"value": 384 << 20})  # type: ignore[attr-defined]
            for _ in range(100):
                info = await sandbox.vm.qmp("query-balloon")  # type: ignore[attr-defined]
                if info["actual"] <= 400 << 20:  # type: ignore[index]
                    break
                await asyncio.sleep(0.1)
            assert info["actual"] <= 400 << 20  # type: ignore[index]
            assert (await sandbox.code.run("print(6 * 7)")).stdout == "42\n"
        # QEMU discards a restored guest's ballooned pages by punching holes in the file
        # it maps: the sealed memfd that every restore of the snapshot maps refuses.
        assert filecmp.cmp(image, snapshot.memory_file, shallow=False)
    finally:
        await manager.delete_snapshot(snapshot.id)


DNS_QUERY = """
import socket, struct
name = b"\\x06denied\\x04test\\x00"
query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
gateway = open("/proc/net/route").read().split()[13]
server = socket.inet_ntoa(struct.pack("<I", int(gateway, 16)))
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(10)
client.sendto(query, (server, 53))
print(client.recv(512)[3] & 0x0F)
"""


async def test_the_network_services_that_parse_guest_traffic_run_unprivileged(sandbox_factory, manager):
    sandbox = await sandbox_factory(network={"domains": ["allowed.test"]})
    pid = manager.networks.services.pid
    assert pid is not None
    seen = inspect(pid)
    assert seen.uid >= 200_000 and seen.cap_eff == 0 and seen.cap_bnd == 0 and seen.no_new_privs == 1
    assert seen.mount_namespace != os.readlink("/proc/self/ns/mnt"), "a root of its own"
    assert seen.net_namespace == os.readlink("/proc/self/ns/net"), "the host's network, to reach upstream"
    assert not any(f.endswith("ember.db") for f in seen.files), "the state database is not in its view"
    # It is what answers the sandbox's DNS: a name the policy refuses gets NXDOMAIN (3) at once.
    answer = await sandbox.code.run(DNS_QUERY)
    assert answer.stdout.strip() == "3", answer
