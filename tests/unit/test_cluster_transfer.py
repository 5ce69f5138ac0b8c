"""A snapshot file's copy between hosts: only its data extents travel, and the SHA-256 catches any change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember import errors
from ember.cluster.transfer import Receiver, digest, extents


def sparse_file(path: Path) -> Path:
    with path.open("wb") as out:
        out.truncate(64 << 20)
        out.seek(1 << 20)
        out.write(os.urandom(300_000))
        out.seek(40 << 20)
        out.write(b"tail" * 1000)
    return path


def copy(source: Path, target: Path, stream: bytes, expected: str, piece: int = 7919) -> None:
    receiver = Receiver(target, source.stat().st_size, 0o640)
    try:
        for start in range(0, len(stream), piece):
            receiver.feed(stream[start : start + piece])
    except BaseException:
        receiver.abort()
        raise
    receiver.finish(expected, "memory")


def test_a_sparse_file_arrives_whole_with_its_holes(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "memory")
    stream = b"".join(extents(source))
    assert len(stream) < 1 << 20  # the 64 MiB file's holes are not sent
    copy(source, tmp_path / "copy", stream, digest(source))
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    assert (tmp_path / "copy").stat().st_blocks * 512 < 2 << 20
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o640


def test_a_changed_byte_is_refused(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "memory")
    stream = bytearray(b"".join(extents(source)))
    stream[5000] ^= 1
    with pytest.raises(errors.IOError, match="SHA-256"):
        copy(source, tmp_path / "copy", bytes(stream), digest(source))


def test_a_cut_stream_is_refused(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "memory")
    stream = b"".join(extents(source))
    with pytest.raises(errors.IOError, match="middle of an extent"):
        copy(source, tmp_path / "copy", stream[:-10], digest(source))


def test_an_extent_beyond_the_files_end_is_refused(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "memory")
    bogus = (1 << 40).to_bytes(8, "big") + (10).to_bytes(8, "big") + b"x" * 10
    with pytest.raises(errors.IOError, match="beyond"):
        copy(source, tmp_path / "copy", bogus, digest(source))
