"""Disk layers: every sandbox's writable disk is a chain of files in ``data_dir/layers``.

A booted sandbox starts with one sparse raw ext4 layer. A snapshot freezes the
sandbox's top layer (it is never written again) and the sandbox goes on in a new
qcow2 overlay on top; a restored sandbox gets its own overlay on the snapshot's
frozen top. So a chain is ``[writable top, ..., frozen base]``, layers are shared
by sandboxes and snapshots, and a layer file is deleted only when no live
sandbox's chain and no snapshot's chain contains it (``collect``).

Layers are sparse, so sandboxes together may be allowed more disk than the host
has: a reserve of free space in the data directory (``EMBER_DISK_RESERVE_MIB``)
is kept, below which creates and snapshots are refused (``check_disk``), and a
guest that writes into a full disk gets its own I/O error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from ember.errors import ResourceExhaustedError, VmmError
from ember.images import create_writable_disk
from ember.settings import Settings

log = logging.getLogger("ember.engine")


class Layers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.data_dir / "layers"
        self.directory.mkdir(parents=True, exist_ok=True)
        # Creating a layer and recording it in a chain must not interleave with a collection.
        self.lock = asyncio.Lock()

    def new_path(self, suffix: str) -> Path:
        return self.directory / f"{secrets.token_hex(8)}.{suffix}"

    async def base(self, size_mib: int) -> Path:
        """A new empty ext4 layer of ``size_mib`` MiB (sparse)."""
        path = self.new_path("raw")
        await asyncio.to_thread(create_writable_disk, self.settings, path, size_mib)
        return path

    async def overlay(self, backing: Path, blank: Path | None = None) -> Path:
        """A new qcow2 layer whose reads fall through to ``backing``.

        ``blank`` is an empty overlay on the same backing (every snapshot keeps
        one): copying its few hundred KB is far quicker than running qemu-img
        (about 10 ms), and a restore waits for it.
        """
        path = self.new_path("qcow2")
        if blank is not None and blank.exists():
            await asyncio.to_thread(shutil.copyfile, blank, path)
        else:
            await create_overlay(backing, path)
        return path

    def collect(self, chains: Iterable[Iterable[str]]) -> int:
        """Delete every layer no chain references; returns how many went."""
        referenced = {Path(layer).name for chain in chains for layer in chain}
        removed = 0
        for path in self.directory.iterdir():
            if path.name not in referenced:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


async def create_overlay(backing: Path, path: Path, size_mib: int | None = None) -> None:
    """Create the qcow2 file ``path``, empty, whose reads fall through to ``backing``.

    With ``size_mib`` (the backing's size) qemu-img does not open the backing, so
    the overlay can be made for a layer that a running VM still writes.
    """
    backing_format = "raw" if backing.suffix == ".raw" else "qcow2"
    unopened = ("-u", str(path), f"{size_mib}M") if size_mib is not None else (str(path),)
    process = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing), *unopened,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    if process.returncode != 0:
        path.unlink(missing_ok=True)
        raise VmmError(f"qemu-img could not create an overlay on {backing}: {stderr.decode().strip()}")


def root_reserve_mib(directory: Path) -> int:
    """Space of ``directory``'s filesystem that only root may write (ext4's reserved blocks).

    The daemon writes its state as root and jailed VMMs write disk layers as
    their own uids: with a root reserve, guests that fill the disk stop at it
    and the daemon can still record what happens.
    """
    stats = os.statvfs(directory)
    return (stats.f_bfree - stats.f_bavail) * stats.f_frsize >> 20


def check_disk(directory: Path, reserve_mib: int, what: str) -> None:
    """Refuse ``what`` when the data directory's free space is under the reserve."""
    free_mib = shutil.disk_usage(directory).free >> 20
    if free_mib < reserve_mib:
        raise ResourceExhaustedError(
            f"cannot {what}: the data directory {directory} has {free_mib} MiB free, under the reserve of "
            f"{reserve_mib} MiB (EMBER_DISK_RESERVE_MIB); delete snapshots, templates or sandboxes, "
            "or free disk space"
        )


def disk_format(path: str | Path) -> str:
    return "raw" if str(path).endswith(".raw") else "qcow2"
