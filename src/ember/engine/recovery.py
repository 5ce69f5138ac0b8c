"""What a daemon finds when it starts: the sandboxes, processes and files a previous one left.

Recovery trusts the processes, not only the ledger. A record that says running is
reattached if its VM still answers; every other live record (booting, pooled, or a
VM that is gone or mute) is ended with a recorded reason. Then every QEMU of this
daemon's run directory that is not one of the reattached sandboxes' is killed,
whatever the ledger says (a daemon killed mid-create or mid-fork leaves VMMs that
no record calls running), and what they held goes with them: run directories,
cgroups, uid claims, network namespaces. Snapshots that a kill cut short never
became visible (a snapshot's record is written once its files are complete), so
their directories, and the one-use snapshots of forks and template builds that
never finished, are removed too; disk layers and imported images nothing references
go with the next collection.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ember import errors
from ember.engine.sandbox import Sandbox, SandboxState, vm_spec
from ember.engine.snapshots import Snapshots
from ember.engine.store import SandboxRecord, Store
from ember.network.networks import Networks
from ember.settings import Settings
from ember.vmm import QemuDriver

log = logging.getLogger("ember.engine")


async def recover(
    settings: Settings, store: Store, driver: QemuDriver, networks: Networks, snapshots: Snapshots
) -> dict[str, Sandbox]:
    """Reattach to the running sandboxes a previous daemon left, end and clean up the rest."""
    adopted: dict[str, Sandbox] = {}
    for record in store.list(live_only=True):
        sandbox = await _reattach(record, store, driver, networks)
        if sandbox is not None:
            adopted[record.id] = sandbox
    keep = set(adopted)
    for pid, sandbox_id in await driver.kill_strays(keep):
        log.warning("killed QEMU %d of sandbox %s, left running by a previous daemon", pid, sandbox_id)
    _remove_run_dirs(settings.run_dir, keep)
    await networks.remove_leftovers(keep=keep)
    driver.release_leftovers(keep=keep)
    snapshots.remove_unfinished()
    return adopted


async def _reattach(
    record: SandboxRecord, store: Store, driver: QemuDriver, networks: Networks
) -> Sandbox | None:
    if not record.disk_chain:  # written by an older Ember, which kept disks elsewhere
        _end(record, store, "left by an older version of Ember")
        return None
    sandbox = Sandbox(record, driver.create(vm_spec(record)), store, networks, {})
    if record.state == SandboxState.BOOTING.value:
        await sandbox.destroy("the daemon restarted while the sandbox was booting", dead=True)
        return None
    if record.state == SandboxState.POOLED.value:
        await sandbox.destroy("the warm pool is refilled when the daemon starts")
        return None
    try:
        writing = await sandbox.vm.adopt([Path(layer) for layer in record.disk_chain])
    except errors.EmberError as exc:
        log.warning("sandbox %s cannot be reattached: %s", record.id, exc)
        await sandbox.destroy("the VM was no longer running when the daemon restarted", dead=True)
        return None
    if str(writing) != record.disk_chain[0]:
        # Killed between recording a snapshot's next layer and moving the VM onto it:
        # the layer never written goes with the next collection.
        log.warning("sandbox %s still writes %s: its record is set back to it", record.id, writing)
        record.disk_chain = record.disk_chain[record.disk_chain.index(str(writing)) :]
        store.save(record)
    try:
        await sandbox.adopt()
    except errors.EmberError as exc:
        log.warning("could not reattach sandbox %s: %s", record.id, exc)
        return None
    log.info("reattached sandbox %s", record.id)
    return sandbox


def _end(record: SandboxRecord, store: Store, reason: str) -> None:
    record.state, record.ended_at, record.end_reason = SandboxState.DEAD.value, time.time(), reason
    store.save(record)


def _remove_run_dirs(run_root: Path, keep: set[str]) -> None:
    """Run directories of sandboxes not reattached: their QEMUs are gone by now."""
    try:
        entries = [entry for entry in run_root.iterdir() if entry.is_dir() and entry.name not in keep]
    except FileNotFoundError:
        return
    for entry in entries:
        log.info("removing the run directory %s, left by a previous daemon", entry)
        shutil.rmtree(entry, ignore_errors=True)
