"""EMBER_KSM=on, on the host's own KSM: the daemon runs ksmd, and pages that two sandboxes
hold alike are merged into one (per VMM: ``/proc/PID/ksm_merging_pages``)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.engine import SandboxManager
from ember.vmm.ksm import SYSFS
from ember.vmm.memory import MEMFD_PREFIX
from jails import assert_jailed

pytestmark = pytest.mark.integration

PAGES = 2048  # 8 MiB in each guest
#: Pages that differ from each other (so none merges within one guest) and hold the same
#: bytes in both guests (the same Python allocates them the same way).
FILL = f"""
import hashlib
held = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() * 128 for i in range({PAGES}))
print(len(held))
"""
MERGE_TIMEOUT_S = 180
#: ksmd's pace while the test runs: a page merges on its second or third scan, and at the
#: kernel's default (100 pages every 20 ms, ~20 MiB/s) a host with a few GiB of mergeable
#: memory takes minutes per scan.
TEST_PAGES_TO_SCAN = "1000"


def merging_pages(pid: int) -> int:
    return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())


def guest_ram_mergeable(pid: int) -> bool:
    """Whether the VMM's mapping of its snapshot's memory image is offered to KSM (``mg``)."""
    mapping = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if not line[0].isupper():  # a mapping's first line: its addresses
            mapping = line
        elif line.startswith("VmFlags:") and mapping is not None and MEMFD_PREFIX in mapping:
            return "mg" in line.split()[1:]
    raise AssertionError(f"QEMU {pid} maps no memory image")


@pytest.fixture
def fast_ksmd() -> Iterator[None]:
    """ksmd scanning faster while the test runs, then as it was."""
    pace = SYSFS / "pages_to_scan"
    was = pace.read_text()
    pace.write_text(TEST_PAGES_TO_SCAN)
    try:
        yield
    finally:
        pace.write_text(was)


@pytest.mark.skipif(not (SYSFS / "run").exists(), reason="this kernel has no KSM")
async def test_pages_two_sandboxes_hold_alike_are_merged(fast_ksmd, sandbox_factory, manager: SandboxManager):
    was = (SYSFS / "run").read_text()
    source = await sandbox_factory()
    # Off (the default), a restored guest's RAM is offered to no ksmd, whoever runs it.
    (unmerged,) = await manager.fork(source.id, 1)
    try:
        assert not guest_ram_mergeable(unmerged.vm.pid)  # type: ignore[arg-type]
    finally:
        await manager.destroy(unmerged.id)
    driver = manager.driver
    driver.settings = dataclasses.replace(driver.settings, ksm=True)
    driver.start()  # as the daemon's start does with EMBER_KSM=on
    assert driver.ksm.active and (SYSFS / "run").read_text() == "1\n"
    # Forks map their snapshot's image privately: what each guest writes is its own copy.
    forks = await manager.fork(source.id, 2)
    try:
        pids = [fork.vm.pid for fork in forks]
        for fork, pid in zip(forks, pids, strict=True):
            assert "ksm_merge_any: yes" in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines()
            assert guest_ram_mergeable(pid)  # type: ignore[arg-type]
            assert_jailed(fork)  # made mergeable before the jail dropped what that needs
        before = [merging_pages(pid) for pid in pids]  # type: ignore[arg-type]
        for fork in forks:
            assert (await fork.code.run(FILL)).stdout == f"{PAGES * 4096}\n"
        deadline = time.monotonic() + MERGE_TIMEOUT_S
        while True:
            merged = [merging_pages(pid) - b for pid, b in zip(pids, before, strict=True)]  # type: ignore[arg-type]
            if min(merged) >= PAGES * 0.9:
                break
            assert time.monotonic() < deadline, f"ksmd merged {merged} of the {PAGES} pages each guest wrote"
            await asyncio.sleep(1)
        # Merged, each guest still reads its own: a write breaks the sharing for the writer only.
        await forks[0].code.run("held = bytes(len(held))")
        page_1 = hashlib.sha256((1).to_bytes(4, "little")).hexdigest()
        assert (await forks[1].code.run("print(held[4096:4128].hex())")).stdout == f"{page_1}\n"
    finally:
        for fork in forks:
            await manager.destroy(fork.id)
    driver.ksm.stop()  # as the daemon's end does (QemuDriver.close): ksmd as it was found
    assert (SYSFS / "run").read_text() == was
