"""Reading the pages a process wrote over a private file mapping, on this very process."""

from __future__ import annotations

import mmap
import os

from ember.vmm.ram import PAGE, write_pages, written_pages


def test_only_written_pages_are_read_and_they_rebuild_the_memory(tmp_path):
    memory = tmp_path / "memory"
    original = b"".join(bytes([n]) * PAGE for n in range(16))
    memory.write_bytes(original)
    with memory.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), len(original), access=mmap.ACCESS_COPY)
    try:
        _ = mapping[5 * PAGE]  # read only: still the file's page
        mapping[2 * PAGE : 4 * PAGE] = b"a" * (2 * PAGE)  # a run of two pages
        mapping[9 * PAGE] = 0x7A  # one byte dirties its whole page
        expected = bytes(mapping)
        pages = written_pages(os.getpid(), memory)
    finally:
        mapping.close()
    assert [(offset // PAGE, len(data) // PAGE) for offset, data in pages] == [(2, 2), (9, 1)]
    assert memory.read_bytes() == original, "reading must never write the mapped file"

    copy = tmp_path / "copy"
    copy.write_bytes(original)
    write_pages(copy, pages)
    assert copy.read_bytes() == expected


def test_a_file_the_process_does_not_map_has_no_written_pages(tmp_path):
    memory = tmp_path / "memory"
    memory.write_bytes(b"\0" * PAGE)
    assert written_pages(os.getpid(), memory) == []


def test_many_runs_come_back_in_order_whatever_reader_took_them(tmp_path):
    memory = tmp_path / "memory"
    original = bytes(64 * PAGE)
    memory.write_bytes(original)
    with memory.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), len(original), access=mmap.ACCESS_COPY)
    try:
        for page in range(0, 64, 2):  # 32 runs of one page, of different sizes of content
            mapping[page * PAGE : page * PAGE + page + 1] = bytes([page + 1]) * (page + 1)
        expected = bytes(mapping)
        pages = written_pages(os.getpid(), memory)
    finally:
        mapping.close()
    assert [offset // PAGE for offset, _ in pages] == list(range(0, 64, 2))
    copy = tmp_path / "copy"
    copy.write_bytes(original)
    write_pages(copy, pages)
    assert copy.read_bytes() == expected
