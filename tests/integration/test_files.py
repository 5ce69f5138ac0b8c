"""Files in a real microVM: streams of any size, listings, metadata, stable error codes.

Large files move on the VM's transfer disk (``ember.protocol.extents``); the guest's
own I/O counters of that disk show that they did.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from ember import errors
from ember.protocol.extents import LANES, TRANSFER_DISK_SERIAL

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


async def transfer_disk_sectors(sandbox) -> tuple[int, int]:
    """Sectors the guest has read from and written to its transfer disk."""
    script = (
        f'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = {TRANSFER_DISK_SERIAL} ] && cat $d/stat; done'
    )
    fields = (await sandbox.commands.run(script)).stdout.split()
    return int(fields[2]), int(fields[6])


async def test_fifty_megabytes_of_random_bytes_round_trip_on_the_transfer_disk(shared_sandbox):
    data = os.urandom(50 * MIB)
    read_before, written_before = await transfer_disk_sectors(shared_sandbox)
    started = time.perf_counter()
    info = await shared_sandbox.files.write("/app/random.bin", data)
    uploaded = time.perf_counter()
    back = await shared_sandbox.files.read("/app/random.bin")
    downloaded = time.perf_counter()
    assert info.size == len(data)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    guest_sum = await shared_sandbox.commands.run("sha256sum /app/random.bin")
    assert guest_sum.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    read_after, written_after = await transfer_disk_sectors(shared_sandbox)
    assert (read_after - read_before) * 512 >= len(data) and (written_after - written_before) * 512 >= len(
        data
    )
    # Its pages go back to the host once a transfer ends.
    assert os.stat(shared_sandbox.vm.transfer_disk).st_blocks == 0
    print(f"\nupload {50 / (uploaded - started):.1f} MB/s, download {50 / (downloaded - uploaded):.1f} MB/s")
    await shared_sandbox.files.remove("/app/random.bin")


async def test_more_transfers_at_once_than_lanes_all_arrive_whole(shared_sandbox):
    contents = [os.urandom(MIB + index) for index in range(LANES + 2)]  # the last ones use the channel
    await asyncio.gather(
        *(shared_sandbox.files.write(f"/app/many/{i}.bin", data) for i, data in enumerate(contents))
    )
    back = await asyncio.gather(
        *(shared_sandbox.files.read(f"/app/many/{i}.bin") for i in range(len(contents)))
    )
    assert back == contents
    await shared_sandbox.files.remove("/app/many", recursive=True)


async def test_write_creates_parents_and_sets_mode(shared_sandbox):
    info = await shared_sandbox.files.write("deep/er/script.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    assert info.path == "/app/deep/er/script.sh" and info.mode == 0o755
    assert (await shared_sandbox.commands.run("/app/deep/er/script.sh")).stdout == "hi\n"


async def test_list_stat_mkdir_rename_remove(shared_sandbox):
    await shared_sandbox.files.mkdir("/app/tree/sub")
    await shared_sandbox.files.write("/app/tree/a.txt", b"aaa")
    await shared_sandbox.files.write("/app/tree/sub/b.txt", b"bb")
    shallow = await shared_sandbox.files.list("/app/tree")
    assert [(e.name, e.type) for e in shallow] == [("a.txt", "file"), ("sub", "dir")]
    deep = await shared_sandbox.files.list("/app/tree", depth=2)
    assert {e.path for e in deep} == {"/app/tree/a.txt", "/app/tree/sub", "/app/tree/sub/b.txt"}
    stat = await shared_sandbox.files.stat("/app/tree/a.txt")
    assert (stat.size, stat.type, stat.owner) == (3, "file", "root")
    moved = await shared_sandbox.files.rename("/app/tree/a.txt", "/app/tree/sub/c.txt")
    assert moved.path == "/app/tree/sub/c.txt"
    assert not await shared_sandbox.files.exists("/app/tree/a.txt")
    with pytest.raises(errors.DirectoryNotEmptyError):
        await shared_sandbox.files.remove("/app/tree")
    await shared_sandbox.files.remove("/app/tree", recursive=True)
    assert not await shared_sandbox.files.exists("/app/tree")


async def test_errors_map_to_stable_codes(shared_sandbox):
    await shared_sandbox.files.write("/app/plain.txt", b"x")
    with pytest.raises(errors.PathNotFoundError):
        await shared_sandbox.files.read("/app/missing.txt")
    with pytest.raises(errors.NotADirectoryError):
        await shared_sandbox.files.list("/app/plain.txt")
    with pytest.raises(errors.AlreadyExistsError):
        await shared_sandbox.files.mkdir("/app/plain.txt")
    with pytest.raises(errors.IsADirectoryError):
        await shared_sandbox.files.read("/app")
    with pytest.raises(errors.AlreadyExistsError):
        await shared_sandbox.files.rename("/app/plain.txt", "/app/plain.txt", overwrite=False)
    with pytest.raises(errors.PermissionDeniedError):
        await shared_sandbox.files.remove("/oldroot/etc/hostname")  # the read-only base image
    with pytest.raises(errors.InvalidRequestError):
        await shared_sandbox.files.stat("bad\0path")


@pytest.mark.parametrize("sent", [19, 5 * MIB], ids=["channel", "transfer_disk"])
async def test_an_interrupted_upload_leaves_the_old_file_intact(shared_sandbox, sent):
    await shared_sandbox.files.write("/app/keep.txt", b"original")

    async def failing_body():
        yield os.urandom(sent)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await shared_sandbox.files.write("/app/keep.txt", failing_body())
    assert await shared_sandbox.files.read("/app/keep.txt") == b"original"
    # The guest drops the temporary file once the cancel reaches it (after the extent it
    # is moving, on the transfer disk), and only then answers: the lane comes back with it.
    deadline = time.monotonic() + 10
    while leftovers := [e.name for e in await shared_sandbox.files.list("/app") if "ember-" in e.name]:
        assert time.monotonic() < deadline, f"the cut upload's temporary file stayed: {leftovers}"
        await asyncio.sleep(0.05)
    async with shared_sandbox.agent_call() as agent:
        lanes = [agent.transfer_lane() for _ in range(LANES)]
        for lane in lanes:
            if lane is not None:
                lane.release()
    assert None not in lanes
    data = os.urandom(3 * MIB)
    await shared_sandbox.files.write("/app/keep.txt", data)
    assert await shared_sandbox.files.read("/app/keep.txt") == data


async def test_ranged_read(shared_sandbox):
    await shared_sandbox.files.write("/app/range.txt", b"0123456789")
    chunks = [c async for c in shared_sandbox.files.read_stream("/app/range.txt", offset=3, length=4)]
    assert b"".join(chunks) == b"3456"
