"""Per-sandbox writable disks: sparse ext4 files the guest mounts as its overlay's upper layer.

A disk is a sparse copy of an empty, pre-formatted template cached per size:
copying the few allocated MiB of a template takes about a millisecond, running
mkfs.ext4 takes 15-40 ms. The guest mounts it with ``noinit_itable``; the
template is formatted with lazy inode table and journal initialisation, so
nothing ever zeroes the unused space and the file stays sparse.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactCache, ArtifactKey
from ember.images.progress import BuildProgress
from ember.settings import Settings
from ember.sparse import copy_sparse

WRITABLE_DISK_LABEL = "ember-rw"
TEMPLATE_FILE = "disk.ext4"
# Bump when the mkfs options change.
TEMPLATE_BUILDER_VERSION = "1"
_MKFS_OPTIONS = ("-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")


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
