"""A snapshot's files as another host needs them, and a copy from another host joining this one.

A snapshot is its directory (``memory``, ``state``, ``overlay.qcow2``) and the
frozen disk layers of its chain; the guest kernel and base image are not copied:
they are this host's own, built from the same sources (a snapshot whose images
this host lacks is refused at restore, as any other). ``portable`` describes a
snapshot without this host's paths; ``adopt`` takes files staged by the caller
(already checked), points the copied qcow2 layers at their new backing paths,
and moves everything into place with the record, under the layers' lock, so that
no collection sees a layer without its chain. A template's copy takes the name
from an older template of that name here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ember import errors
from ember.engine.snapshots import Snapshots
from ember.engine.store import SnapshotRecord
from ember.settings import Settings

#: The files of a snapshot's directory that a copy needs (a fork's has no memory file: never copied).
SNAPSHOT_FILES = ("memory", "state", "overlay.qcow2")


@dataclass(frozen=True)
class SnapshotFile:
    #: ``snapshot/<file>`` or ``layer/<file>``: where it goes on the other host.
    name: str
    path: Path
    mode: int


def files_of(snapshot: SnapshotRecord) -> list[SnapshotFile]:
    directory = Path(snapshot.directory)
    found = [directory / name for name in SNAPSHOT_FILES]
    if not found[0].exists():
        raise errors.SnapshotIncompatibleError(
            f"snapshot {snapshot.id} lives in memory only and cannot be copied"
        )
    files = [SnapshotFile(f"snapshot/{p.name}", p, p.stat().st_mode & 0o777) for p in found]
    files += [
        SnapshotFile(f"layer/{Path(p).name}", Path(p), Path(p).stat().st_mode & 0o777)
        for p in snapshot.disk_chain
    ]
    return files


def portable(snapshot: SnapshotRecord, settings: Settings) -> dict[str, Any]:
    """The record without this host's paths: layers by file name, images relative to the images directory."""
    record = asdict(snapshot)
    record["directory"] = ""
    record["disk_chain"] = [Path(p).name for p in snapshot.disk_chain]
    for field in ("kernel", "rootfs"):
        path = Path(record[field])
        if path.is_relative_to(settings.images_dir):
            record[field] = str(path.relative_to(settings.images_dir))
    return record


def staging_dir(settings: Settings) -> Path:
    """Where copies arrive before they are adopted (emptied when the daemon starts)."""
    return settings.data_dir / "incoming"


def local_images(described: dict[str, Any], settings: Settings) -> dict[str, str]:
    """The kernel and root filesystem of this host that a described snapshot needs; refused when
    this host lacks one (built from other sources, or an image imported on the other host only:
    imported OCI images are not copied between hosts)."""
    found = {}
    for field in ("kernel", "rootfs"):
        path = Path(described[field])
        found[field] = str(path if path.is_absolute() else settings.images_dir / path)
        if not Path(found[field]).exists():
            raise errors.SnapshotIncompatibleError(
                f"snapshot {described['id']} needs the guest {field} {path}, which this host lacks "
                "(guest images built from other sources, or an OCI image imported on another host only)"
            )
    return found


async def adopt(snapshots: Snapshots, described: dict[str, Any], staged: Path) -> SnapshotRecord:
    """Make the snapshot staged in ``staged`` (``snapshot/`` and ``layer/``) one of this host's."""
    known = {f.name for f in dataclasses.fields(SnapshotRecord)}
    record = SnapshotRecord(**{k: v for k, v in described.items() if k in known})
    layers = snapshots.layers.directory
    chain = [layers / name for name in record.disk_chain]
    for field, path in local_images(described, snapshots.settings).items():
        setattr(record, field, path)
    record.directory = str(snapshots.directory / record.id)
    record.disk_chain = [str(p) for p in chain]
    # Copied overlays still name their backing files on the host they came from.
    for index, name in enumerate(p.name for p in chain):
        if index + 1 < len(chain):
            await _rebase(staged / "layer" / name, chain[index + 1])
    await _rebase(staged / "snapshot" / "overlay.qcow2", chain[0])
    async with snapshots.layers.lock:
        if snapshots.store.get_snapshot(record.id) is not None:
            return snapshots.get(record.id)
        for path in chain:
            if not path.exists():
                os.rename(staged / "layer" / path.name, path)
        os.rename(staged / "snapshot", record.directory)
        if record.kind == "template" and record.name:
            older = snapshots.store.snapshot_named(record.name)
            if older is not None:
                if older.created_at > record.created_at:
                    record = dataclasses.replace(record, name=None, state="deleted")
                else:
                    snapshots.delete(older)
        snapshots.store.save_snapshot(record)
    return record


async def _rebase(layer: Path, backing: Path) -> None:
    """Point the qcow2 file ``layer`` at ``backing`` without reading either (a raw base has no backing)."""
    if layer.suffix != ".qcow2":
        return
    backing_format = "raw" if backing.suffix == ".raw" else "qcow2"
    process = await asyncio.create_subprocess_exec(
        "qemu-img", "rebase", "-u", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(layer),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    if process.returncode:
        raise errors.IOError(f"qemu-img rebase of a copied layer failed: {stderr.decode().strip()}")
