"""The QEMU driver: what every QEMU VM of this host shares, and the factory of ``QemuVM``.

It chooses once, at start, how VMMs run here: the acceleration (``ember.vmm.accel``),
the guest clock rate under TCG, and the jail (``ember.vmm.jail``): the jailer process,
the uid range, the cgroup hierarchies (``ember.vmm.cgroups``) and the memory images
restored VMs map (``ember.vmm.memory``); and, when asked for, the host's KSM
(``ember.vmm.ksm``), run from ``start`` to ``close``. What this host cannot give
is said at start (``protections``) and refused at create (``check_isolation``),
never skipped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from ember.errors import IsolationUnavailableError, VmmError
from ember.settings import Settings
from ember.vmm import clock
from ember.vmm.accel import Acceleration
from ember.vmm.base import VmSpec
from ember.vmm.cgroups import CgroupHost, CgroupsUnavailable
from ember.vmm.jail import JAIL_ROOT, Jailer, python_jail
from ember.vmm.ksm import HostKsm
from ember.vmm.memory import MemoryImages, VmStarts
from ember.vmm.qemu import QemuVM, kernel_args
from ember.vmm.uids import UidRange

log = logging.getLogger("ember.vmm")

#: The holder of the uid claim of the daemon's helpers (``spawn_helper``).
HELPERS = "helpers"


class QemuDriver:
    """Makes QEMU VMs with the acceleration chosen once for this host, and owns what
    they share: the jailer, the uid range, the cgroup hierarchies and the memory images."""

    name = "qemu"
    #: The machine and device set a saved VM state belongs to: a state saved under
    #: another one cannot be loaded. Change it whenever ``command_line``'s devices change.
    #: 4: TCG guests boot with the host's TSC frequency (``ember.vmm.clock``), and
    #: saved states hold devices only, without the configuration section.
    #: 5: the transfer disk, the probe port, and TCG's CPU without ERMS/FSRM.
    machine_abi = "qemu-microvm-5"

    def __init__(self, settings: Settings, accel: Acceleration) -> None:
        self.settings = settings
        self.accel = accel
        # Under KVM the guest has kvm-clock; only a TCG guest needs the host's TSC rate.
        self.tsc_khz = clock.host_tsc_khz() if accel.kind == "tcg" else None
        self.kernel_args = " ".join(kernel_args(accel))
        self.jailer = Jailer()
        #: VMs starting now: the background work on memory images waits for them.
        self.starts = VmStarts()
        self.memory = MemoryImages(self.starts)
        self.ksm = HostKsm()
        self.uids = UidRange(*settings.uid_range, settings.instance)
        self.jail_root = JAIL_ROOT
        self.cgroups: CgroupHost | None = None
        self._missing: list[str] = []
        if settings.jail:
            if os.geteuid() != 0:
                self._missing.append("the jail needs the daemon to run as root")
            try:
                self.cgroups = CgroupHost.detect(settings.instance)
            except CgroupsUnavailable as exc:
                self._missing.append(str(exc))
        self._qemu_path: str | None = None
        self._disk_cache: str | None = None
        self._helper_uid: int | None = None

    @property
    def jailed(self) -> bool:
        return self.settings.jail

    @property
    def qemu_path(self) -> str:
        if self._qemu_path is None:
            found = shutil.which(self.settings.qemu_binary)
            if found is None:
                raise VmmError(
                    f"{self.settings.qemu_binary} not found; install Debian's qemu-system-x86 package"
                )
            self._qemu_path = os.path.abspath(found)
        return self._qemu_path

    @property
    def disk_cache(self) -> str:
        """How QEMU writes a sandbox's disk layer: past the host's page cache when jailed.

        Its dirty pages there would be charged to the VMM's cgroup, and under cgroup
        v1 nothing writes them back before the memory limit ends the VMM (a 315 MB
        upload did, measured). So a jailed VMM writes with O_DIRECT where the layers'
        filesystem has it, ignoring flushes as before (a sandbox's disk need not
        survive a host crash); the guest's own page cache still absorbs its writes.
        """
        if self._disk_cache is None:
            direct = self.jailed and _direct_io_works(self.settings.data_dir / "layers")
            self._disk_cache = "cache.direct=on,cache.no-flush=on" if direct else "cache=unsafe"
        return self._disk_cache

    def start(self) -> None:
        """Set up what the daemon runs on this host while it runs (KSM, when asked for)."""
        if self.settings.ksm:
            self.ksm.start()
            log.info("%s", self.ksm.describe())

    def check_isolation(self) -> None:
        """Refuse to start a VMM that cannot be jailed as configured."""
        if self._missing:
            raise IsolationUnavailableError(
                f"cannot jail the sandbox's VMM: {'; '.join(self._missing)}. Fix the host, or set "
                "EMBER_JAIL=off to run VMMs unconfined (development only, never for untrusted code)"
            )
        if self.jailed:
            self.jail_root.mkdir(parents=True, exist_ok=True)

    def protections(self) -> str:
        """What this host gives every sandbox's VMM, for the daemon to say at start."""
        ksm = f", {self.ksm.describe()}" if self.ksm.active else ""
        if not self.jailed:
            return f"jail OFF (EMBER_JAIL=off: VMMs run unconfined, as the daemon's user), seccomp on{ksm}"
        if self._missing:
            return f"jail UNAVAILABLE, creates will fail: {'; '.join(self._missing)}"
        first, last = self.settings.uid_range
        assert self.cgroups is not None
        return (
            f"jail on (uid per sandbox from {first}-{last}, no capabilities, no_new_privs, "
            f"own mount/network/IPC/UTS namespaces, pivot_root), seccomp on, {self.cgroups.describe()}{ksm}"
        )

    def create(self, spec: VmSpec) -> QemuVM:
        return QemuVM(spec, self)

    async def kill_strays(self, keep: set[str]) -> list[tuple[int, str]]:
        """Kill every QEMU of this daemon's run directory whose sandbox is not in ``keep``,
        and wait until each is gone; returns ``(pid, sandbox id)`` of each."""
        strays = [(pid, name) for pid, name in qemu_processes(self.settings.run_dir) if name not in keep]
        for pid, _ in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid, _ in strays:
            await _exited(pid)
        return strays

    async def spawn_helper(self, argv: list[str], fds: list[int]) -> int:
        """Start one of the daemon's Python helpers (the network services) jailed as a uid
        of its own, in the host's network namespace; returns its pid."""
        jail = None
        if self.jailed:
            self.check_isolation()
            if self._helper_uid is None:
                self._helper_uid = self.uids.claim(HELPERS)
            jail = python_jail(self._helper_uid, self.jail_root)
        return await self.jailer.spawn(argv, fds, jail)

    def release_leftovers(self, keep: set[str]) -> None:
        """Remove the cgroups and uid claims of this instance's sandboxes that are not in ``keep``."""
        if self.cgroups is not None:
            for cgroup in self.cgroups.leftovers(keep):
                cgroup.remove()
        for uid, holder in self.uids.holders().items():
            if holder not in keep and uid != self._helper_uid:
                self.uids.release(uid)

    async def close(self) -> None:
        await self.jailer.close()
        self.memory.close()
        self.ksm.stop()
        if self._helper_uid is not None:
            self.uids.release(self._helper_uid)
            self._helper_uid = None
        if self.cgroups is not None:
            self.cgroups.close()


def qemu_processes(run_root: Path) -> list[tuple[int, str]]:
    """``(pid, sandbox id)`` of every QEMU process started for a sandbox of ``run_root``."""
    prefix, marker = f"{run_root}/".encode(), b"process=ember-"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if marker in cmdline and prefix in cmdline and b"qemu" in cmdline.split(b"\0", 1)[0]:
            name = cmdline.split(marker, 1)[1].split(b"\0", 1)[0].decode(errors="replace")
            found.append((int(entry.name), name))
    return found


async def _exited(pid: int, timeout_s: float = 10.0) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
    try:
        await asyncio.wait_for(gone, timeout_s)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _direct_io_works(directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_DIRECT, 0o600))
    except OSError:
        return False
    return True
