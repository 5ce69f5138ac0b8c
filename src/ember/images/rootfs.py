"""The base root filesystem image: the cached Debian tree plus the guest agent, as ext4.

Every VM gets this image read-only as /dev/vda (``root=/dev/vda ro
init=/sbin/ember-init``); its writes go to its own writable disk.

Assembly is fast because the tree is not copied: ``cp --link`` makes a staging
tree of hard links to the cached one (directories are new, files are shared),
the agent's files are added as new files (never written through a link), and
``mkfs.ext4 -d`` packs the staging tree into a fresh image. So a change to the
agent costs one mkfs, not a debootstrap, and the cached tree is never modified.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactKey
from ember.images.guest_agent import AGENT_ROOT, agent_digest, install_agent

ROOTFS_LABEL = "ember-base"
ROOTFS_FILE = "rootfs.ext4"
# Bump when the assembly below changes the image.
ROOTFS_BUILDER_VERSION = "2"
_MIB = 1 << 20
_HEADROOM_FRACTION = 0.2
_MIN_HEADROOM_MIB = 64
_BLOCK_SIZE = 4096


def rootfs_key(tree_key: ArtifactKey) -> ArtifactKey:
    """The image's cache key: the tree it is made from and the agent's files."""
    return ArtifactKey(
        "rootfs",
        {"agent": agent_digest(), "builder": ROOTFS_BUILDER_VERSION, "tree": tree_key.name},
    )


def build_rootfs(workspace: Workspace, tree: Path) -> None:
    """Pack `tree` plus the guest agent into ``workspace.out/rootfs.ext4``."""
    workspace.stage("assembling root filesystem")
    staging = workspace.scratch / "root"
    workspace.run(["cp", "--archive", "--link", tree, staging])
    install_agent(staging)
    # Compile the agent with the guest's own interpreter: the base is read-only,
    # so without .pyc files every boot would compile it again (~2 s under TCG).
    # Hash-based .pyc files stay valid whatever the files' mtimes.
    workspace.run(
        ["chroot", staging, "/usr/bin/python3", "-m", "compileall", "-q",
         "--invalidation-mode", "unchecked-hash", f"/{AGENT_ROOT}"]
    )  # fmt: skip
    pack_ext4(workspace, staging, ROOTFS_LABEL, workspace.out / ROOTFS_FILE)


def pack_ext4(workspace: Workspace, tree: Path, label: str, image: Path) -> None:
    """Pack `tree` into a new read-only ext4 image at `image`, sized to it with some headroom."""
    used_bytes, entries = _usage(tree)
    size_mib = math.ceil(used_bytes / _MIB) + max(
        _MIN_HEADROOM_MIB, math.ceil(used_bytes * _HEADROOM_FRACTION / _MIB)
    )
    inodes = entries + max(4096, int(entries * _HEADROOM_FRACTION))
    workspace.note(f"tree: {used_bytes} bytes in {entries} entries -> {size_mib} MiB image")
    workspace.stage("writing root filesystem image")
    workspace.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            label,
            "-d",
            tree,
            "-b",
            str(_BLOCK_SIZE),
            "-N",
            str(inodes),
            # Read-only for its whole life: no journal, no blocks reserved for root.
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,nodiscard",
            image,
            f"{size_mib}M",
        ]
    )


def _usage(root: Path) -> tuple[int, int]:
    """Bytes the tree needs on a 4 KiB-block filesystem, and its number of entries."""
    seen: set[int] = set()
    used = entries = 0
    for directory, subdirs, names in os.walk(root):
        for name in subdirs + names:
            entries += 1
            info = os.lstat(os.path.join(directory, name))
            if info.st_ino in seen:
                continue
            seen.add(info.st_ino)
            used += math.ceil(info.st_size / _BLOCK_SIZE) * _BLOCK_SIZE
    return used, entries
