"""The benchmark's split of a VMM's memory (PSS by what the pages hold) and its fork timings."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from ember.bench import memory
from ember.bench.forkbound import ForkRun, server_timing


@pytest.mark.parametrize(
    ("line", "anonymous", "category"),
    [
        ("7f00-7f10 rw-p 00000000 00:01 3626   /memfd:ember-memory-ab12 (deleted)", True, memory.WRITTEN),
        ("7f00-7f10 rw-p 00000000 00:01 3626   /memfd:ember-memory-ab12 (deleted)", False, memory.IMAGE),
        ("7f00-7f10 rw-s 00000000 00:01 3626   /dev/shm/ember-0/ab12/memory", False, memory.IMAGE),
        ("7f00-7f10 rwxp 00000000 00:00 0 ", True, memory.TCG),
        ("5600-5610 rw-p 00000000 00:00 0          [heap]", True, memory.HEAP),
        ("7f00-7f10 rw-p 00000000 00:00 0 ", True, memory.ANONYMOUS),
        ("7f00-7f10 rw-p 00000000 00:00 0          [stack]", True, memory.ANONYMOUS),
        ("5600-5610 r--p 00c94000 fe:00 2170896    /usr/bin/qemu-system-x86_64", True, memory.RELOCATED),
        ("5600-5610 r-xp 00407000 fe:00 2170896    /usr/bin/qemu-system-x86_64", False, memory.FILES),
    ],
)
def test_each_page_is_put_where_its_mapping_and_kind_say(line, anonymous, category):
    mapping = memory._mapping(line)
    assert mapping is not None and mapping.category(anonymous) == category


def test_reserved_address_space_holds_no_page():
    assert memory._mapping("7f00-7f10 ---p 00000000 00:00 0 ") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="page frames and their counts are for root")
def test_the_split_adds_up_to_the_pss_the_kernel_reports():
    ballast = mmap.mmap(-1, 8 << 20)
    ballast.write(b"x" * (8 << 20))  # 8 MiB of our own anonymous pages
    split = memory.breakdown([os.getpid()])
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    pss_mib = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024
    assert split is not None and set(split) == set(memory.CATEGORIES)
    assert sum(v for k, v in split.items() if k != memory.PAGE_TABLES) == pytest.approx(pss_mib, rel=0.05)
    assert split[memory.ANONYMOUS] >= 8 and split[memory.PAGE_TABLES] > 0
    ballast.close()


def test_a_process_that_is_gone_has_no_split():
    assert memory.breakdown([2**22 + 1]) is None


def test_server_timing_is_read_in_seconds_and_bad_parts_are_left_out():
    header = "snapshot;dur=52.5, snapshot-cpu;desc=x;dur=10, children-cpu;dur=abc, ;dur=3, other"
    assert server_timing(header) == {"snapshot": 0.0525, "snapshot-cpu": 0.010}
    assert server_timing("") == {}


def test_a_forks_bound_is_its_snapshot_plus_its_childrens_cpu_over_the_cores():
    single = [ForkRun(1, 0.5, 0.05, 0.2, 0), ForkRun(1, 0.6, 0.07, 0.3, 0), ForkRun(1, 0.5, 0.05, 0.25, 0)]
    eight = [ForkRun(8, 1.5, 0.06, 0.2, 1.0), ForkRun(8, 1.6, 0.08, 0.2, 1.0)]
    assert ForkRun.bound_s(eight, single, cores=2) == pytest.approx(0.07 + 8 * 0.25 / 2)
