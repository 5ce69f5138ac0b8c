"""A full data disk: creates and snapshots are refused with resource_exhausted, the guest that
filled it gets its own I/O error, and the daemon and its other sandboxes carry on."""

from __future__ import annotations

import pytest

from ember import errors

pytestmark = pytest.mark.integration


async def test_a_full_data_disk_refuses_creates_and_snapshots_and_costs_only_the_writer(own_manager):
    manager = await own_manager(data_disk_mib=384, disk_reserve_mib=96)
    bystander = await manager.create(vcpus=1, memory_mb=256)
    writer = await manager.create(vcpus=1, memory_mb=256)
    try:
        # Its disk layer is sparse and allowed 4 GiB: it can write more than the host has.
        filled = await writer.commands.run(
            "dd if=/dev/urandom of=/app/fill bs=1M count=400 conv=fsync 2>&1; echo exit=$?", timeout_s=300
        )
        assert "exit=0" not in filled.stdout, filled.stdout  # its own error, in the guest
        assert (await writer.commands.run("echo still here")).stdout == "still here\n"
        assert (await bystander.code.run("print(6 * 7)")).stdout == "42\n"
        with pytest.raises(errors.ResourceExhaustedError, match="EMBER_DISK_RESERVE_MIB"):
            await manager.create(vcpus=1, memory_mb=256)
        snapshots = {p.name for p in (manager.settings.data_dir / "snapshots").iterdir()}
        with pytest.raises(errors.ResourceExhaustedError, match="take a snapshot"):
            await manager.snapshot(bystander.id)
        assert {p.name for p in (manager.settings.data_dir / "snapshots").iterdir()} == snapshots
        assert [s.id for s in manager.list()] == [bystander.id, writer.id]
    finally:
        await manager.destroy(writer.id)
    # Its layer went with it: room again.
    again = await manager.create(vcpus=1, memory_mb=256)
    await manager.destroy(again.id)
    await manager.destroy(bystander.id)
