"""Snapshots: a sandbox's memory, devices and disk, frozen on the host's disk.

A snapshot is a directory ``data_dir/snapshots/<id>`` holding ``memory`` (the
guest RAM, a sparse file that is never written again), ``state`` (device state
only, tens of KB) and ``overlay.qcow2`` (an empty overlay on the frozen disk
top, which each restore copies rather than run qemu-img), plus the sandbox's
disk layers frozen in ``data_dir/layers``. Every restore maps ``memory``
copy-on-write (private mapping): sandboxes restored from one snapshot share its
pages in the host's page cache, and each writes only its own copies.

Taking one depends on where the sandbox's RAM lives:

- a booted sandbox's RAM *is* its own memory file (a shared mapping on tmpfs).
  The sandbox is paused, its devices saved and its disk frozen (it goes on in a
  new overlay), its memory file copied sparsely into the snapshot, and it runs
  on, on its own file. The source keeps its file and the snapshot gets a copy,
  rather than the source becoming a copy-on-write clone of the snapshot: a clone
  needs a new QEMU process (about 0.3 s to answer under TCG) and would cut the
  source's agent connection and streams, while the copy costs a pause of
  roughly 1 ms per 10 MB of touched guest memory and nothing else.
- a restored sandbox's RAM is the memory file it maps privately plus the pages
  its guest wrote since. The file is copied while the guest runs (or a spare
  copy made after the last snapshot on that file is taken: ``ember.engine.spares``);
  in the pause only the written pages are read out of QEMU (``ember.vmm.ram``),
  and they are laid over the copy once the guest runs on. So every snapshot ends
  as one mappable file, whatever it was taken of, and no pause copies all the
  RAM; the pause grows with what the guest wrote (35-50 ms per 100 MB, measured).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ember import errors
from ember.engine.disks import Layers, create_overlay
from ember.engine.spares import MemorySpares
from ember.engine.store import SandboxRecord, SnapshotRecord, Store
from ember.settings import Settings
from ember.sparse import copy_sparse
from ember.vmm import QemuDriver
from ember.vmm.base import VirtualMachine, VmState
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
        self.spares = MemorySpares(self.directory / ".spares")

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
        # freezes; qemu-img runs alongside the copy below.
        top = Path(record.disk_chain[0])
        blank = asyncio.create_task(create_overlay(top, snapshot.blank_overlay, record.disk_mib))
        capture: Capture | None = None  # for a restored sandbox: see ember.vmm.ram
        try:
            if not record.memory_shared:
                # A restored sandbox's RAM is the file it maps plus what it wrote: the
                # file never changes, so it is copied before the pause (a spare copy
                # when one is ready). Copied during the pause instead, it takes the
                # CPU the pause needs: a longer pause.
                await self.spares.copy(Path(record.memory_file), snapshot.memory_file)
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
                        snapshot.memory_file.unlink(missing_ok=True)
                        await asyncio.to_thread(copy_sparse, Path(record.memory_file), snapshot.memory_file)
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
            await asyncio.to_thread(write_pages, snapshot.memory_file, written)
            for path in (snapshot.memory_file, snapshot.state_file, snapshot.blank_overlay):
                path.chmod(0o444)  # a restore maps or copies them; nothing writes them again
        except BaseException as exc:
            await asyncio.gather(blank, return_exceptions=True)  # it would write into the directory
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
        if not record.memory_shared:
            self.spares.prepare(Path(record.memory_file))
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
        self.spares.forget({s.memory_file for s in kept})
        self.driver.memory.forget({s.memory_file for s in kept})
        removed = self.layers.collect([*(r.disk_chain for r in live), *(s.disk_chain for s in kept)])
        if removed:
            log.info("removed %d unused disk layers", removed)

    def close(self) -> None:
        self.spares.close()


#: RAM captures per snapshot before giving up on devices that keep writing it.
_RAM_CAPTURES = 5


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _allocated_bytes(directory: Path) -> int:
    return sum(path.stat().st_blocks * 512 for path in directory.iterdir())
