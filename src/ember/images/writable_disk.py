"""Per-sandbox writable disks: sparse ext4 files the guest mounts as its overlay's upper layer.

A disk is a sparse copy of an empty, pre-formatted template cached per size:
copying the few allocated MiB of a template takes about a millisecond, running
mkfs.ext4 takes 15-40 ms. The guest mounts it with ``noinit_itable``; the
template is formatted with lazy inode table and journal initialisation, so
nothing ever zeroes the unused space and the file stays sparse.
"""

from __future__ import annotations

import errno
import os
from functools import partial
from pathlib import Path

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactCache, ArtifactKey
from ember.images.progress import BuildProgress
from ember.settings import Settings

WRITABLE_DISK_LABEL = "ember-rw"
TEMPLATE_FILE = "disk.ext4"
# Bump when the mkfs options change.
TEMPLATE_BUILDER_VERSION = "1"
_MKFS_OPTIONS = ("-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")
_COPY_CHUNK = 1 << 20


def create_writable_disk(settings: Settings, path: Path, size_mib: int) -> None:
    """Create a new empty ext4 disk of `size_mib` MiB at `path`, which must not exist."""
    if size_mib < 16:
        raise ValueError(f"a writable disk needs at least 16 MiB, not {size_mib}")
    key = ArtifactKey(
        "writable-disk",
        {
            "builder": TEMPLATE_BUILDER_VERSION,
            "label": WRITABLE_DISK_LABEL,
            "mkfs": " ".join(_MKFS_OPTIONS),
            "size_mib": str(size_mib),
        },
    )
    cache = ArtifactCache(settings.images_dir)
    template = cache.ensure(key, partial(_build_template, size_mib=size_mib), BuildProgress())
    copy_sparse(template / TEMPLATE_FILE, path)


def _build_template(workspace: Workspace, size_mib: int) -> None:
    image = workspace.out / TEMPLATE_FILE
    with image.open("xb") as file:
        file.truncate(size_mib << 20)
    workspace.run(["mkfs.ext4", "-q", "-F", "-L", WRITABLE_DISK_LABEL, *_MKFS_OPTIONS, image])


def copy_sparse(source: Path, target: Path) -> None:
    """Copy `source` to the new file `target`, copying only its data and leaving holes as holes."""
    with source.open("rb") as src, target.open("xb") as dst:
        try:
            _copy_data(src.fileno(), dst.fileno())
        except BaseException:
            target.unlink()
            raise


def _copy_data(src: int, dst: int) -> None:
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        data_end = os.lseek(src, data_start, os.SEEK_HOLE)
        _copy_range(src, dst, data_start, data_end)
        offset = data_end


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        try:
            copied = os.copy_file_range(src, dst, end - offset, offset, offset)
        except OSError as exc:
            # Across filesystems (EXDEV) or where unsupported: copy through memory.
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            copied = os.pwrite(dst, os.pread(src, min(_COPY_CHUNK, end - offset), offset), offset)
        if copied == 0:
            raise OSError(errno.EIO, f"short copy at offset {offset}")
        offset += copied
