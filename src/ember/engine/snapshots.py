"""Snapshots: a sandbox's memory, devices and disk, frozen.

A snapshot is a directory ``data_dir/snapshots/<id>`` holding ``memory`` (the
guest RAM, a sparse file that is never written again), ``state`` (device state
only, tens of KB) and ``overlay.qcow2`` (an empty overlay on the frozen disk
top, which each restore copies rather than run qemu-img), plus the sandbox's
disk layers frozen in ``data_dir/layers``; and, while a sandbox maps it, its
memory *image*: a sealed memfd of the RAM (``ember.vmm.memory``), which every
restore maps copy-on-write, so that sandboxes restored from one snapshot share
its pages and each writes only its own copies. The image is built first and the
``memory`` file written from it; a fork's snapshot, which lives only as long as
its children, has no ``memory`` file at all.

Taking one depends on where the sandbox's RAM lives:

- a booted sandbox's RAM *is* its own memory file (a shared mapping on tmpfs).
  The sandbox is paused, its devices saved and its disk frozen (it goes on in a
  new overlay), its memory file copied sparsely into an empty image, and it runs
  on, on its own file. The source keeps its file and the snapshot gets a copy,
  rather than the source becoming a copy-on-write clone of the snapshot: a clone
  needs a new QEMU process (about 0.3 s to answer under TCG) and would cut the
  source's agent connection and streams, while the copy costs a pause of
  roughly 1 ms per 10 MB of touched guest memory and nothing else.
- a restored sandbox's RAM is the image it maps privately plus the pages its
  guest wrote since. The image is copied while the guest runs (or a spare copy
  made after the last snapshot of it is taken: ``ember.engine.spares``); in the
  pause only the written pages are read out of QEMU (``ember.vmm.ram``), and
  they are laid over the copy once the guest runs on. So no pause copies all the
  RAM; the pause grows with what the guest wrote (35-50 ms per 100 MB, measured).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from ember import errors
from ember.engine.disks import Layers, check_disk, create_overlay
from ember.engine.spares import Make, MemorySpares
from ember.engine.store import SandboxRecord, SnapshotRecord, Store
from ember.settings import Settings
from ember.sparse import copy_data
from ember.vmm import QemuDriver
from ember.vmm.base import VirtualMachine, VmState
from ember.vmm.memory import copy_of, new_image
from ember.vmm.memory import save as save_image
from ember.vmm.ram import Capture, Pages, write_pages

log = logging.getLogger("ember.engine")


class Snapshots:
    """Takes, finds and deletes snapshots; the store keeps their records."""

    def __init__(self, settings: Settings, store: Store, layers: Layers, driver: QemuDriver) -> None:
        self.settings = settings
        self.store = store
        self.layers = layers
        self.driver = driver
        self.directory = settings.data_dir / "snapshots"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.spares = MemorySpares(driver.starts)

    # ------------------------------------------------------------ taking

    async def take(
        self,
        record: SandboxRecord,
        vm: VirtualMachine,
        *,
        kind: str = "snapshot",
        metadata: dict[str, str] | None = None,
    ) -> SnapshotRecord:
        """Freeze the sandbox of ``record`` into a new snapshot; it runs on afterwards.

        ``record`` (the sandbox's) is updated in place with its new disk chain.
        """
        check_disk(self.settings.data_dir, self.settings.disk_reserve_mib, "take a snapshot")
        snapshot_id = secrets.token_hex(8)
        directory = self.directory / snapshot_id
        directory.mkdir()
        snapshot = SnapshotRecord(
            id=snapshot_id,
            owner=record.owner,
            state="ready",
            kind=kind,
            directory=str(directory),
            vcpus=record.vcpus,
            memory_mib=record.memory_mib,
            disk_mib=record.disk_mib,
            kernel=record.kernel,
            kernel_args=record.kernel_args,
            rootfs=record.rootfs,
            disk_chain=list(record.disk_chain),
            source_sandbox=record.id,
            machine=self.driver.machine_abi,
            metadata=dict(metadata or {}),
        )
        # The blank overlay that restores copy, made on the top that the pause
        # freezes; qemu-img runs alongside the image below.
        top = Path(record.disk_chain[0])
        blank = asyncio.create_task(create_overlay(top, snapshot.blank_overlay, record.disk_mib))
        key, make = _image_source(record, vm, snapshot_id)
        image: int | None = None
        capture: Capture | None = None  # for a restored sandbox: see ember.vmm.ram
        try:
            # The image starts as what the sandbox's RAM is made from, before the pause:
            # made then, it takes the CPU the pause needs (a longer pause).
            image = await self.spares.take(key, make) if key is not None else make()
            if not record.memory_shared:
                capture = await asyncio.to_thread(vm.ram_capture)
            await blank
            async with self.layers.lock:
                next_disk = self.layers.new_path("qcow2")
                # The layer is recorded before it exists, so a collection cannot take it.
                record.disk_chain = [str(next_disk), *record.disk_chain]
                self.store.save(record)
            written: Pages = []
            try:
                # The sandbox goes on in a copy of the blank overlay: an empty layer on its top.
                await asyncio.to_thread(shutil.copyfile, snapshot.blank_overlay, next_disk)
                started = time.perf_counter()
                await vm.save(snapshot.state_file, next_disk)
                for _ in range(_RAM_CAPTURES):
                    if capture is None:  # a booted sandbox: its RAM is its own file
                        await asyncio.to_thread(_copy_into, Path(record.memory_file), image)
                    else:
                        written = await asyncio.to_thread(vm.written_ram, capture)
                    if await vm.devices_unchanged(snapshot.state_file):
                        break
                else:
                    raise errors.VmmError(
                        "the sandbox's devices kept writing its memory while it was paused for the "
                        "snapshot (traffic on its agent channel); the sandbox runs on, try again"
                    )
            except BaseException:
                if vm.disk != next_disk:  # the disk was not frozen: the VM still writes the old top
                    record.disk_chain = snapshot.disk_chain
                    self.store.save(record)
                    next_disk.unlink(missing_ok=True)
                raise
            finally:
                if vm.state is VmState.PAUSED:
                    await vm.resume()
            log.info("sandbox %s paused %.1f ms for snapshot %s", record.id, _ms(started), snapshot_id)
            await asyncio.to_thread(write_pages, image, written)
            self.driver.memory.put(snapshot.memory_file, image)  # sealed: restores map it from now on
            image = None
            if kind != "fork":  # a fork's snapshot lives only as long as its children, in memory
                memory = await self.driver.memory.open(snapshot.memory_file)
                await asyncio.to_thread(save_image, memory, snapshot.memory_file)
            for path in (snapshot.memory_file, snapshot.state_file, snapshot.blank_overlay):
                if path.exists():
                    path.chmod(0o444)  # a restore maps or copies them; nothing writes them again
        except BaseException as exc:
            await asyncio.gather(blank, return_exceptions=True)  # it would write into the directory
            if image is not None:
                os.close(image)
            self.driver.memory.forget_one(snapshot.memory_file)
            shutil.rmtree(directory, ignore_errors=True)
            unchanged = "the sandbox runs on unchanged"
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise errors.DiskFullError(
                    f"no space left for the snapshot in {self.directory}; {unchanged}"
                ) from exc
            if isinstance(exc, OSError):
                raise errors.IOError(f"writing the snapshot failed ({exc}); {unchanged}") from exc
            raise
        snapshot.size_bytes = _allocated_bytes(directory)
        self.store.save_snapshot(snapshot)
        if key is not None:
            self.spares.prepare(key, make)
        return snapshot

    # ------------------------------------------------------------ restoring

    def check_restorable(self, snapshot: SnapshotRecord) -> None:
        """Refuse a snapshot whose kernel, base image or VM machine is not this host's any more."""
        if snapshot.machine != self.driver.machine_abi:
            raise errors.SnapshotIncompatibleError(
                f"snapshot {snapshot.id} was saved by another version of Ember's VM "
                f"({snapshot.machine or 'unversioned'}, now {self.driver.machine_abi}); "
                "take a new snapshot (or rebuild the template)"
            )
        missing = [p for p in (snapshot.kernel, snapshot.rootfs) if not Path(p).exists()]
        if missing:
            raise errors.SnapshotIncompatibleError(
                f"snapshot {snapshot.id} was taken on guest images that are gone ({', '.join(missing)}); "
                "take a new snapshot (or rebuild the template) on the current images"
            )

    # ------------------------------------------------------------ finding and deleting

    def get(self, snapshot_id: str, owner: str | None = None) -> SnapshotRecord:
        snapshot = self.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.state != "ready" or (owner is not None and snapshot.owner != owner):
            raise errors.SnapshotNotFoundError(f"no snapshot {snapshot_id!r}")
        return snapshot

    def template(self, name: str) -> SnapshotRecord:
        snapshot = self.store.snapshot_named(name)
        if snapshot is None:
            raise errors.TemplateNotFoundError(
                f"no template {name!r}; build it with `ember template build {name}`"
            )
        return snapshot

    def list(self, owner: str | None = None, kind: str = "snapshot") -> list[SnapshotRecord]:
        return [s for s in self.store.snapshots() if s.kind == kind and (owner is None or s.owner == owner)]

    def delete(self, snapshot: SnapshotRecord) -> None:
        """Retire a snapshot; its files go once no sandbox restored from it is left (``collect``)."""
        self.store.save_snapshot(replace(snapshot, state="deleted", name=None))

    def collect(self, live: list[SandboxRecord]) -> None:
        """Delete retired snapshots no live sandbox maps, and layers no chain holds."""
        mapped = {r.snapshot_id for r in live}
        kept = []
        for snapshot in self.store.snapshots(include_deleted=True):
            if snapshot.state == "deleted" and snapshot.id not in mapped:
                shutil.rmtree(snapshot.directory, ignore_errors=True)
                self.store.forget_snapshot(snapshot.id)
            else:
                kept.append(snapshot)
        # Images a live sandbox maps, or a template's restores will, stay; of the others,
        # the most recently used do, within a budget (made again from their files after).
        mapped_images = {Path(r.memory_file) for r in live if not r.memory_shared}
        pinned = mapped_images | {s.memory_file for s in kept if s.kind in ("template", "fork")}
        self.driver.memory.retain(pinned, existing={s.memory_file for s in kept})
        self.spares.forget({str(p) for p in mapped_images})
        removed = self.layers.collect([*(r.disk_chain for r in live), *(s.disk_chain for s in kept)])
        if removed:
            log.info("removed %d unused disk layers", removed)

    def remove_unfinished(self) -> None:
        """At start: drop what a daemon killed mid-snapshot, mid-fork or mid-build left.

        A snapshot's record is written once its files are complete, so a directory
        without one is half-written; a fork's snapshot and a template's before it is
        named are never wanted after their operation, which did not finish.
        """
        recorded = {Path(s.directory).name for s in self.store.snapshots(include_deleted=True)}
        for entry in self.directory.iterdir():
            if entry.is_dir() and entry.name not in recorded:
                log.info("removing the unfinished snapshot %s", entry.name)
                shutil.rmtree(entry, ignore_errors=True)
        for snapshot in self.store.snapshots():
            if snapshot.kind == "fork" or (snapshot.kind == "template" and not snapshot.name):
                log.info("retiring the %s snapshot %s of an operation cut short", snapshot.kind, snapshot.id)
                self.delete(snapshot)

    def close(self) -> None:
        self.spares.close()


#: RAM captures per snapshot before giving up on devices that keep writing it.
_RAM_CAPTURES = 5


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _allocated_bytes(directory: Path) -> int:
    return sum(path.stat().st_blocks * 512 for path in directory.iterdir())


def _image_source(record: SandboxRecord, vm: VirtualMachine, snapshot_id: str) -> tuple[str | None, Make]:
    """The spare key (None: no spare needed) and maker of a new image for a snapshot of
    ``record``'s sandbox.

    A restored sandbox's RAM is the image it maps plus what it wrote: the image is
    copied (from the VMM's own descriptor, which outlives a daemon restart). A booted
    sandbox's RAM is its own file, copied into an empty image in the pause.
    """
    if record.memory_shared:
        return None, partial(new_image, record.memory_mib << 20, snapshot_id)
    # The image a durable snapshot's file holds exactly; read from the page cache, the file
    # is the quicker copy. A fork's snapshot has only its image.
    source = Path(record.memory_file)
    return record.memory_file, partial(copy_of, source if source.exists() else vm.memory_image(), snapshot_id)


def _copy_into(memory_file: Path, image: int) -> None:
    """A booted sandbox's RAM (its sparse file) into an empty image of the same size."""
    fd = os.open(memory_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        copy_data(fd, image)
    finally:
        os.close(fd)
