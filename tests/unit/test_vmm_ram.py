"""Reading the pages a process wrote over a private file mapping, on this very process."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from ember.vmm import ram
from ember.vmm.ram import PAGE, Capture, Pages, write_pages


def test_only_written_pages_are_read_and_they_rebuild_the_memory(tmp_path):
    original = b"".join(bytes([n]) * PAGE for n in range(16))
    with _private_mapping(tmp_path, original) as (memory, mapping):
        _ = mapping[5 * PAGE]  # read only: still the file's page
        mapping[2 * PAGE : 4 * PAGE] = b"a" * (2 * PAGE)  # a run of two pages
        mapping[9 * PAGE] = 0x7A  # one byte dirties its whole page
        expected = bytes(mapping)
        pages = Capture(os.getpid(), memory).read()
    assert [(offset // PAGE, len(data) // PAGE) for offset, data in pages] == [(2, 2), (9, 1)]
    assert memory.read_bytes() == original, "reading must never write the mapped file"
    assert _rebuilt(tmp_path, original, pages) == expected


def test_a_file_the_process_does_not_map_has_no_written_pages(tmp_path):
    memory = tmp_path / "memory"
    memory.write_bytes(b"\0" * PAGE)
    assert Capture(os.getpid(), memory).read() == []


def test_many_runs_come_back_in_order_whatever_reader_took_them(tmp_path):
    original = bytes(64 * PAGE)
    with _private_mapping(tmp_path, original) as (memory, mapping):
        for page in range(0, 64, 2):  # 32 runs of one page, of different sizes of content
            mapping[page * PAGE : page * PAGE + page + 1] = bytes([page + 1]) * (page + 1)
        expected = bytes(mapping)
        pages = Capture(os.getpid(), memory).read()
    assert [offset // PAGE for offset, _ in pages] == list(range(0, 64, 2))
    assert _rebuilt(tmp_path, original, pages) == expected


def test_a_prepared_buffer_holds_what_was_written_and_what_came_after(tmp_path, monkeypatch):
    # Prepared for every written set, with no room to spare: pages written after the
    # preparation (before the pause, in a VM) are read into fresh memory instead.
    monkeypatch.setattr(ram, "_PREPARE_MIN_BYTES", 0)
    monkeypatch.setattr(ram, "_SLACK_BYTES", 0)
    original = bytes(8 * PAGE)
    with _private_mapping(tmp_path, original) as (memory, mapping):
        mapping[1 * PAGE] = 1
        capture = Capture(os.getpid(), memory)
        mapping[3 * PAGE] = 3
        mapping[1 * PAGE + 1] = 2
        expected = bytes(mapping)
        pages = capture.read()
    assert [offset // PAGE for offset, _ in pages] == [1, 3]
    assert _rebuilt(tmp_path, original, pages) == expected


@contextlib.contextmanager
def _private_mapping(tmp_path: Path, original: bytes) -> Iterator[tuple[Path, mmap.mmap]]:
    """A file holding ``original`` and this process's copy-on-write mapping of it."""
    memory = tmp_path / "memory"
    memory.write_bytes(original)
    with memory.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), len(original), access=mmap.ACCESS_COPY)
    try:
        yield memory, mapping
    finally:
        mapping.close()


def _rebuilt(tmp_path: Path, original: bytes, pages: Pages) -> bytes:
    """The memory file's contents with ``pages`` laid over a copy of it."""
    copy = tmp_path / "copy"
    copy.write_bytes(original)
    fd = os.open(copy, os.O_WRONLY)
    try:
        write_pages(fd, pages)
    finally:
        os.close(fd)
    return copy.read_bytes()
