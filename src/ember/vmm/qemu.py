"""One QEMU microVM: a ``microvm`` machine controlled over QMP (``qemu_driver`` makes them).

Decisions the command line encodes (measured in notes/qemu-tcg-facts.md):
- ``-M microvm,acpi=off``: our kernel has no ACPI, and only with ACPI off does
  QEMU put the virtio-mmio devices on the kernel command line.
- ``-rtc clock=vm``: the CMOS RTC runs on the VM's clock, which stops while the
  VM is paused. On the host's clock (the default) its saved state changed every
  second of a pause, so a snapshot whose RAM copy crossed a second (a booted
  2 GiB guest) failed its "devices unchanged" check, 2 tries in 3, measured. The
  guest takes its time from the agent; without an RTC at all (``rtc=off``) the
  kernel spent 2.9 s of each boot failing to read it under TCG.
- guest RAM is a ``memory-backend-file`` in the VM's run directory, shared, so a
  snapshot can later keep the file itself as the memory image.
- the base image is attached read-only and shared by every VM; the per-VM disk
  is the overlay's upper layer.
- the agent channel is a virtio-serial port named ``ember.agent`` on a unix
  socket; the console goes to a log file read back for error messages. A
  second port, ``ember.probe``, only serves ``ember bench`` to measure the
  channel's own ceiling (a port costs the guest 512 KiB of receive buffers).
- a third disk, the transfer disk (``ember.protocol.extents``), carries files'
  bytes: a sparse file in the run directory, made empty at every start (a restored
  VM gets its own), that the daemon reads and writes beside QEMU. It is last on the
  command line, so the root and writable disks stay vda and vdb.
- ``-cpu max,-erms,-fsrm`` under TCG: with "enhanced rep movsb" the guest's kernel
  copies and clears memory with ``rep movsb``/``stosb``, which TCG runs one byte
  per step; without it, ``rep movsq``, eight (measured: /dev/zero to /dev/null
  104 MB/s -> 1.4 GB/s, reading a cached file 63 -> 771 MB/s, a download through
  the agent channel 3.5x faster).
- ``-no-reboot`` plus ``panic=-1``: when the agent (PID 1) dies the guest panics,
  reboots, and QEMU exits instead of hanging.
- ``tsc=reliable``: under TCG with several vCPUs the kernel otherwise distrusts
  the TSC and loses its tickless idle (5x the idle CPU); ``tsc_early_khz``
  spares it a calibration that fails on a busy host (``ember.vmm.clock``).
- ``norandmaps`` under TCG only: with address-space randomisation every exec
  lays the dynamic loader and libc at new addresses, which TCG translates
  afresh (``true`` from the agent 55 -> 16 ms, a shell loop's exec 25 -> 7 ms,
  measured). The VM, not ASLR inside it, is a sandbox's boundary; under KVM,
  where it costs nothing, the guest keeps it.
- saved state is devices only (``xen-save-devices-state``), loaded by
  ``migrate-incoming``, so every VM runs with ``migration.send-configuration=off``;
  the RAM is always the memory file (``ember.vmm.ram`` for restored VMs).
- ``-sandbox on,...``: QEMU's seccomp filter, everything optional denied (no
  privilege changes, no fork or exec, no scheduling or affinity changes), so
  whatever QEMU used to run a helper for goes through passed file descriptors:
  a restore's state (``migrate-incoming fd:``), a tap (``getfd``), the next disk
  layer of a snapshot (``add-fd``, ``/dev/fdset``).
- a restored VM maps a sealed memfd of its snapshot's memory
  (``ember.vmm.memory``), never the file: ``memory-backend-file`` on
  ``/proc/self/fd/3``. ``dump=off``: guest RAM never lands in a core dump.
- a jailed VM writes its disk layer past the host's page cache
  (``QemuDriver.disk_cache``).
- QEMU runs without transparent huge pages (``_vmm_process``): it asks for them
  on its TCG code buffer, where a 2 MiB page of a VM that translated little is
  mostly zeros (~0.7 MiB per idle restored VM, measured), and the guest RAM of a
  restored VM is a private file mapping, whose written pages are small anyway.
  Its guest RAM is offered to KSM only when the daemon runs it (``mem-merge``,
  ``ember.vmm.ksm``): QEMU's default would let a ksmd started for anything else
  merge guests' pages. Its environment is its own: ``MALLOC_ARENA_MAX=2`` (glibc otherwise gives each
  thread that allocates an arena of its own, and QEMU's passing I/O workers
  leave theirs behind).
Every QEMU runs jailed (``ember.vmm.jail``): its own uid, no capabilities,
``no_new_privs``, a root holding only its sandbox's files, no network, and a
cgroup bounding its CPU, memory and threads (``ember.vmm.cgroups``). It runs in
its own session so that it outlives a daemon crash; the daemon finds it again
through the pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qemu.qmp import QMPClient, QMPError

from ember.errors import BootFailedError, VmmError
from ember.protocol.extents import TRANSFER_DISK_BYTES, TRANSFER_DISK_SERIAL
from ember.protocol.framing import PROBE_PORT_NAME
from ember.vmm import ram
from ember.vmm.accel import Acceleration
from ember.vmm.base import AGENT_PORT_NAME, VirtualMachine, VmSpec, VmState
from ember.vmm.cgroups import Cgroup, Limits
from ember.vmm.jail import Jail, Process
from ember.vmm.memory import MEMFD_PREFIX

if TYPE_CHECKING:
    from ember.vmm.qemu_driver import QemuDriver

log = logging.getLogger("ember.vmm")

KERNEL_ARGS = (
    "console=ttyS0",
    "root=/dev/vda",
    "ro",
    "rootfstype=ext4",
    "init=/sbin/ember-init",
    "quiet",
    "tsc=reliable",
    "panic=-1",
)
_QMP_CONNECT_TIMEOUT_S = 10.0
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
#: Descriptors a restoring QEMU is started with (after its stdout and stderr).
_MEMORY_FD, _STATE_FD = 3, 4
#: Host memory a QEMU takes beyond its guest's RAM, with room to spare (measured:
#: see the README): the TCG translation buffer, its heap and page tables.
VMM_OVERHEAD_MIB = {"tcg": 192, "kvm": 96}
#: A QEMU's threads: main loop, RCU, one per vCPU, and up to 64 block I/O workers.
VMM_MAX_THREADS = 128
_VMM_RLIMITS = {"RLIMIT_CORE": 0, "RLIMIT_NOFILE": 4096, "RLIMIT_NPROC": VMM_MAX_THREADS}
_VMM_ENV = {"MALLOC_ARENA_MAX": "2"}
_NIC_PORT, _UPLINK, _UPLINK_PORT = "nic0", "uplink0", "uplink0port"
#: Every guest's MAC: each sandbox's link is its own (a tap in its own namespace).
GUEST_MAC = "02:e0:00:00:00:02"


def kernel_args(accel: Acceleration) -> tuple[str, ...]:
    """The guest kernel's fixed command line on this host (all but the TSC rate)."""
    return (*KERNEL_ARGS, "norandmaps") if accel.kind == "tcg" else KERNEL_ARGS


class QemuVM(VirtualMachine):
    """One QEMU process running one microVM."""

    def __init__(self, spec: VmSpec, driver: QemuDriver) -> None:
        self.spec = spec
        self.state = VmState.STOPPED
        self._driver = driver
        self._settings = driver.settings
        self._accel = driver.accel
        self._pid: int | None = None
        self._uid: int | None = None
        self._cgroup: Cgroup | None = None
        self._disk = spec.disk
        self._disk_fdset: int | None = None  # the descriptor set of the layer it writes, if passed
        self._qmp: QMPClient | None = None
        self._fd_lock = asyncio.Lock()  # a passed descriptor belongs to the next getfd/add-fd
        self._exit_status: int | None = None
        self._oom_killed = False
        self._exited = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ paths

    @property
    def agent_socket(self) -> Path:
        return self.spec.run_dir / "agent.sock"

    @property
    def console_log(self) -> Path:
        return self.spec.run_dir / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.spec.run_dir / "qmp.sock"

    @property
    def qemu_log(self) -> Path:
        return self.spec.run_dir / "qemu.log"

    @property
    def transfer_disk(self) -> Path:
        return self.spec.run_dir / "transfer.disk"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def disk(self) -> Path:
        return self._disk

    @property
    def uid(self) -> int | None:
        """The uid the VMM runs as (None: not jailed)."""
        return self._uid

    @property
    def cgroup(self) -> Cgroup | None:
        return self._cgroup

    # ------------------------------------------------------------ command line

    def _clock_args(self) -> tuple[str, ...]:
        """Pin the guest clocksource to the TSC when its frequency is known (see ember.vmm.clock)."""
        tsc_khz = self._driver.tsc_khz
        return (f"tsc_early_khz={tsc_khz}",) if tsc_khz else ()

    def _boot_args(self) -> tuple[str, ...]:
        """The kernel to boot; none for a restore, whose kernel is already in the memory file.

        QEMU reads and parses the 19 MB kernel image at every start (about 4 ms of
        a restore, measured) although a restored VM never boots it.
        """
        if self.spec.restore is not None:
            return ()
        append = " ".join((*kernel_args(self._accel), *self._clock_args(), *self.spec.kernel_args))
        return ("-kernel", str(self.spec.kernel), "-append", append)

    def command_line(self) -> list[str]:
        spec = self.spec
        if self._accel.kind == "kvm":
            accel, cpu = "kvm", "host"
        else:
            accel, cpu = f"tcg,tb-size={self._settings.tcg_tb_size_mib}", "max,-erms,-fsrm"
        memory = f"{spec.memory_mib}M"
        # A restore maps its snapshot's sealed memfd (ember.vmm.memory), passed as fd 3.
        mem_path = spec.memory_file if spec.restore is None else f"/proc/self/fd/{_MEMORY_FD}"
        merge = "on" if self._driver.ksm.active else "off"
        return [
            self._driver.qemu_path,
            "-name", f"ember,process=ember-{spec.run_dir.name}",
            "-M", f"microvm,acpi=off,memory-backend=mem,mem-merge={merge}",
            "-rtc", "clock=vm",
            "-accel", accel,
            "-cpu", cpu,
            "-m", memory,
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-sandbox", SECCOMP,
            "-object", f"memory-backend-file,id=mem,size={memory},mem-path={mem_path},"
                       f"share={'on' if spec.memory_shared else 'off'},dump=off",
            *self._boot_args(),
            "-chardev", f"file,id=console,path={self.console_log},append=on",
            "-serial", "chardev:console",
            "-drive", f"id=root,file={spec.rootfs},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            # A full host disk is the guest's I/O error, not a VM stopped until someone looks.
            "-drive", f"id=rw,file={spec.disk},format={spec.disk_format},if=none,{self._driver.disk_cache},"
                      "discard=unmap,werror=report,rerror=report",
            "-device", "virtio-blk-device,drive=rw",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,path={self.agent_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
            "-chardev", f"socket,id=probe,path={spec.run_dir / 'probe.sock'},server=on,wait=off",
            "-device", f"virtserialport,chardev=probe,name={PROBE_PORT_NAME}",
            # The NIC is always there (a restored VM needs the device set it was saved
            # with) but plugged into an empty hub: a network is a tap added at run time.
            "-netdev", f"hubport,id={_NIC_PORT},hubid=0",
            "-device", f"virtio-net-device,netdev={_NIC_PORT},mac={GUEST_MAC}",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=rng0",
            # No free page reporting: QEMU 7.2 answers a report by punching holes in
            # the memory *file*, even under a private (copy-on-write) mapping (the
            # memfd's seals refuse it, but the guest would lose track of its pages).
            "-device", "virtio-balloon-device",
            "-drive", f"id=transfer,file={self.transfer_disk},format=raw,if=none,cache=unsafe,"
                      "werror=report,rerror=report",
            "-device", f"virtio-blk-device,drive=transfer,serial={TRANSFER_DISK_SERIAL}",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-pidfile", str(spec.run_dir / "qemu.pid"),
            # Saved states are devices only, in the stream format that a restore loads.
            "-global", "migration.send-configuration=off",
            # A restored VM waits for its state, then `cont`.
            *(("-S", "-incoming", "defer") if spec.restore is not None else ()),
        ]  # fmt: skip

    def _jail(self, uid: int, cgroup: Cgroup) -> Jail:
        """What this VM's QEMU may see: its run directory and disk (read-write), its
        kernel, base image and frozen disk layers (read-only), and nothing else."""
        spec = self.spec
        binds = [(spec.run_dir, True), (spec.rootfs, False), (spec.disk, True)]
        binds += [(layer, False) for layer in spec.backing]
        if spec.restore is None:
            binds.append((spec.kernel, False))
        if not self._driver.qemu_path.startswith("/usr/"):
            binds.append((Path(self._driver.qemu_path), False))
        devices = ("/dev/null", "/dev/urandom", *(("/dev/kvm",) if self._accel.kind == "kvm" else ()))
        return Jail(
            uid=uid,
            gid=uid,
            root=self._driver.jail_root,
            binds=tuple(binds),
            devices=devices,
            cgroups=cgroup.join_files,
            rlimits=_VMM_RLIMITS,
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.require(VmState.STOPPED)
        driver, spec = self._driver, self.spec
        driver.check_isolation()
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = VmState.BOOTING
        fds: list[int] = []
        try:
            jail = None
            if driver.jailed:
                self._uid = driver.uids.claim(spec.run_dir.name)
                assert driver.cgroups is not None
                limits = self._limits()
                self._cgroup = await asyncio.to_thread(driver.cgroups.create, spec.run_dir.name, limits)
                _own(self._uid, spec.run_dir, spec.disk)
                jail = self._jail(self._uid, self._cgroup)
            _make_transfer_disk(self.transfer_disk, self._uid)
            log = os.open(self.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            fds += [log, log]
            if spec.restore is not None:
                fds.append(await driver.memory.open(spec.memory_file))
                fds.append(os.open(spec.restore.state, os.O_RDONLY | os.O_CLOEXEC))
            self._pid = await driver.jailer.spawn(self.command_line(), fds, jail, self._vmm_process())
        except BaseException:
            self.state = VmState.STOPPED
            await self._release()
            raise
        finally:
            for fd in {fds[0], *fds[3:]} if fds else ():
                os.close(fd)  # the memfd (fds[2]) belongs to the driver's images
        await self._take_control()

    def _vmm_process(self) -> Process:
        """QEMU's environment and memory settings (see the module docstring)."""
        return Process(env=_VMM_ENV, huge_pages=False, merge=self._driver.ksm.active)

    def _limits(self) -> Limits:
        overhead = self._settings.vmm_overhead_mib
        if overhead is None:
            overhead = VMM_OVERHEAD_MIB[self._accel.kind]
        # A guest may fill its transfer disk, which on tmpfs is memory charged to its VMM.
        memory_bytes = ((self.spec.memory_mib + overhead) << 20) + TRANSFER_DISK_BYTES
        return Limits(vcpus=self.spec.vcpus, memory_bytes=memory_bytes, pids=VMM_MAX_THREADS)

    async def load(self) -> None:
        """Load the saved device state into this fresh QEMU (started with -incoming defer).

        The RAM is the spec's memory file, mapped before the load; the state
        holds devices only (see ``save``), passed as fd 4. The VM stays paused for
        ``resume``.

        The host must have opened the agent socket, and QEMU taken that
        connection, before the load. The saved state says the guest's host was
        connected; a port found closed when the guest resumes is reported to it
        as a disconnect, which the guest may handle only after it answered the
        new host's sync, and then it drops that session and its first request.
        """
        restore = self.spec.restore
        if restore is None:
            raise VmmError("only a VM started to restore a snapshot loads one")
        try:
            await self._agent_taken()
            await self.qmp("migrate-incoming", {"uri": f"fd:{_STATE_FD}"})
            status = await self._migration_done()
            if status != "completed":
                raise BootFailedError(self.failure_report(f"restoring {restore.state} failed ({status})"))
        except BaseException:
            await self.stop()
            raise
        self.state = VmState.PAUSED

    async def _agent_taken(self) -> None:
        """Wait until QEMU has accepted the host's connection to the agent socket."""
        deadline = time.monotonic() + _QMP_CONNECT_TIMEOUT_S
        while True:
            chardevs = await self.qmp("query-chardev")
            agent = next((c for c in chardevs if c.get("label") == "agent"), {})  # type: ignore[union-attr]
            if not str(agent.get("filename", "disconnected:")).startswith("disconnected:"):
                return
            if time.monotonic() > deadline:
                raise BootFailedError(self.failure_report("QEMU never took the agent connection"))
            await asyncio.sleep(0.001)

    async def _migration_done(self) -> str:
        while True:
            info = await self.qmp("query-migrate")
            status = str(info.get("status", "none")) if isinstance(info, dict) else "none"
            if status in ("completed", "failed", "cancelled"):
                return status
            if self._exited.is_set():
                return "failed"
            await asyncio.sleep(0.001)

    async def save(self, state: Path, next_disk: Path) -> None:
        self.require(VmState.RUNNING, VmState.PAUSED)
        if self.state is VmState.RUNNING:
            await self.pause()
        # Devices only (no RAM block, whether the RAM is shared or private): the
        # stream a restore loads with migrate-incoming, without the configuration
        # section (``-global migration.send-configuration=off`` on every VM).
        # QEMU writes it next to its sockets; the copy into ``state`` is ours, so a
        # full disk there is an OSError like any other.
        await self._save_devices(state)
        await self._freeze_disk(next_disk)

    async def devices_unchanged(self, state: Path) -> bool:
        # A stopped VM saves the same bytes every time unless a device moved on.
        before = await asyncio.to_thread(state.read_bytes)
        await self._save_devices(state)
        return await asyncio.to_thread(state.read_bytes) == before

    async def _save_devices(self, state: Path) -> None:
        written = self.spec.run_dir / "devices.state"
        await self.qmp("xen-save-devices-state", {"filename": str(written), "live": False})
        try:
            await asyncio.to_thread(shutil.copyfile, written, state)
        finally:
            written.unlink(missing_ok=True)

    def ram_capture(self) -> ram.Capture:
        if self.spec.memory_shared or self._pid is None:
            raise VmmError("only a VM restored from a snapshot has written RAM to read")
        return ram.Capture(self._pid, self.memory_image())

    def memory_image(self) -> Path:
        """The memory a restored VM maps: the memfd it was started with (``ember.vmm.memory``),
        through its QEMU's descriptor, which names it as /proc/PID/maps does. A QEMU of an
        older Ember mapped the file itself."""
        image = Path(f"/proc/{self._pid}/fd/{_MEMORY_FD}")
        with contextlib.suppress(OSError):
            if os.readlink(image).startswith(f"/memfd:{MEMFD_PREFIX}"):
                return image
        return self.spec.memory_file

    def written_ram(self, capture: ram.Capture) -> ram.Pages:
        if self.state is not VmState.PAUSED or capture.pid != self._pid:
            raise VmmError("written RAM is read from this VM, paused")
        return capture.read()

    async def _freeze_disk(self, next_disk: Path) -> None:
        """Freeze the disk layer the VM writes and move it on to ``next_disk``.

        QEMU may not create the file itself (it sees no layers directory), so it is
        passed open, both ways (a reopen read-only looks for a read-only one), as a
        descriptor set; the caller made it with the right backing file.
        """
        descriptors = [os.open(next_disk, mode | os.O_CLOEXEC) for mode in (os.O_RDWR, os.O_RDONLY)]
        try:
            fdset = None
            for fd in descriptors:
                arguments = {"fdset-id": fdset} if fdset is not None else {}
                added = await self._pass_fd(fd, "add-fd", arguments)
                fdset = added["fdset-id"]  # type: ignore[index]
        finally:
            for fd in descriptors:
                os.close(fd)
        arguments = {
            "device": "rw",
            "snapshot-file": f"/dev/fdset/{fdset}",
            "format": "qcow2",
            "mode": "existing",
        }
        await self.qmp("blockdev-snapshot-sync", arguments)
        frozen, self._disk, self._disk_fdset = self._disk, next_disk, fdset
        # The frozen layer is the snapshot's now: readable by every sandbox restored from it.
        await asyncio.to_thread(_freeze_file, frozen)

    async def _drop_stale_fdsets(self) -> None:
        """Close the descriptor sets of layers no longer written, once the VM runs.

        QEMU reopened a frozen layer read-only, but the read-write descriptor it
        was given still holds the layer's write lock, so a restore could not open
        it until the set is gone; and QEMU closes a removed set only while the VM
        runs.
        """
        for fdset in await self.qmp("query-fdsets"):  # type: ignore[union-attr]
            if fdset["fdset-id"] != self._disk_fdset:
                with contextlib.suppress(VmmError):
                    await self.qmp("remove-fd", {"fdset-id": fdset["fdset-id"]})

    async def _pass_fd(self, fd: int, command: str, arguments: dict[str, object]) -> object:
        """Send ``fd`` over QMP and run the command that takes it (``getfd``, ``add-fd``)."""
        self.require(VmState.RUNNING, VmState.PAUSED)
        assert self._qmp is not None
        async with self._fd_lock:
            self._qmp.send_fd_scm(fd)
            return await self.qmp(command, arguments)

    async def attach_nic(self, tap_fd: int) -> None:
        """Join the open tap ``tap_fd`` to the guest NIC's hub (QEMU has no network of its own)."""
        await self._pass_fd(tap_fd, "getfd", {"fdname": _UPLINK})
        try:
            await self.qmp("netdev_add", {"type": "tap", "id": _UPLINK, "fd": _UPLINK})
        except VmmError:
            with contextlib.suppress(VmmError):
                await self.qmp("closefd", {"fdname": _UPLINK})
            raise
        try:
            await self.qmp(
                "netdev_add", {"type": "hubport", "id": _UPLINK_PORT, "hubid": 0, "netdev": _UPLINK}
            )
        except VmmError:
            await self.qmp("netdev_del", {"id": _UPLINK})
            raise

    async def detach_nic(self) -> None:
        """Unplug the tap (QEMU closes it, and it goes); the guest's NIC stays, linked to nothing."""
        for netdev in (_UPLINK_PORT, _UPLINK):
            with contextlib.suppress(VmmError):
                await self.qmp("netdev_del", {"id": netdev})

    async def adopt(self, chain: list[Path]) -> Path:
        """Take over the QEMU a previous daemon started for this spec (found by its pid file).

        Raises VmmError when no such QEMU is running; the caller then cleans up.
        """
        self.require(VmState.STOPPED)
        pid = running_qemu_pid(self.spec.run_dir)
        if pid is None:
            raise VmmError(f"no QEMU is running for {self.spec.run_dir}")
        self._pid = pid
        with contextlib.suppress(OSError):
            uid = os.stat(f"/proc/{pid}").st_uid
            self._uid = uid if uid != 0 else None
        if self._driver.cgroups is not None:
            self._cgroup = self._driver.cgroups.of(self.spec.run_dir.name)
        self.state = VmState.BOOTING
        await self._take_control()
        self._disk = await self._written_layer(chain)
        state = (await self.qmp("query-status"))["status"]  # type: ignore[index]
        if state != "running":
            log.warning("VM of %s found %s (in a snapshot's pause): resumed", self.spec.run_dir.name, state)
            await self.qmp("cont")
        return self._disk

    async def _written_layer(self, chain: list[Path]) -> Path:
        """Which layer of ``chain`` the VM writes, told by the layer below it (a layer QEMU
        was handed as a descriptor has no name of its own there)."""
        blocks = await self.qmp("query-block")
        drive = next((b for b in blocks if b.get("device") == "rw"), None)  # type: ignore[union-attr]
        if drive is None or "inserted" not in drive:
            raise VmmError(f"the VM of {self.spec.run_dir.name} has no writable disk")
        image = drive["inserted"]["image"]
        below = image.get("full-backing-filename") or image.get("backing-filename")
        if below is None:
            return chain[-1]  # the first layer of a booted sandbox has nothing below it
        if Path(below) not in chain[1:]:
            raise VmmError(
                f"the VM of {self.spec.run_dir.name} writes a layer over {below}, "
                "which its record does not name"
            )
        return chain[chain.index(Path(below)) - 1]

    async def _take_control(self) -> None:
        assert self._pid is not None
        self._watch = asyncio.create_task(self._watch_exit(), name=f"qemu-{self._pid}")
        try:
            self._qmp = await self._connect_qmp()
        except BaseException:
            await self.stop()
            raise
        self.state = VmState.RUNNING

    async def _connect_qmp(self) -> QMPClient:
        deadline = time.monotonic() + _QMP_CONNECT_TIMEOUT_S
        while True:
            if self._exited.is_set():
                raise BootFailedError(self.failure_report("QEMU exited while starting"))
            if self.qmp_socket.exists():
                # Nameless: qemu.qmp makes a logger per name, and logging keeps every logger
                # for good (two a soak cycle). Our own logs name the sandbox.
                client = QMPClient()
                try:
                    await client.connect(str(self.qmp_socket))
                    return client
                except (QMPError, OSError):
                    await client.disconnect()
            if time.monotonic() > deadline:
                raise BootFailedError(self.failure_report("QEMU did not open its QMP socket in time"))
            await asyncio.sleep(0.005)

    async def _watch_exit(self) -> None:
        """Wait for QEMU to exit without a thread: poll its pidfd from the event loop.

        A pidfd works for any process, and the QEMU is the jailer's child, not
        ours: its exit status comes from the jailer (unknown, -1, for one a
        previous daemon started). Its cgroup says whether the memory limit ended it.
        """
        assert self._pid is not None
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self._pid)
        except ProcessLookupError:
            pidfd = None
        try:
            if pidfd is None:
                raise ProcessLookupError
            exited = loop.create_future()
            loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
        except ProcessLookupError:
            pass
        finally:
            if pidfd is not None:
                os.close(pidfd)
        self._exit_status = await self._driver.jailer.exit_status(self._pid)
        self._oom_killed = self._cgroup is not None and self._cgroup.oom_kills() > 0
        if self.state is not VmState.STOPPED:
            self.state = VmState.DEAD
        await self._release()
        self._exited.set()

    async def _release(self) -> None:
        """Give back what the jail held once QEMU is gone: its cgroup and its uid."""
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        uid, self._uid = self._uid, None
        if uid is not None:
            self._driver.uids.release(uid)

    async def qmp(self, command: str, arguments: dict[str, object] | None = None) -> object:
        self.require(VmState.RUNNING, VmState.PAUSED, VmState.BOOTING)
        assert self._qmp is not None
        try:
            return await self._qmp.execute(command, arguments)
        except QMPError as exc:
            raise VmmError(f"QMP {command} failed: {exc}") from exc

    async def pause(self) -> None:
        self.require(VmState.RUNNING)
        await self.qmp("stop")
        self.state = VmState.PAUSED

    async def resume(self) -> None:
        self.require(VmState.PAUSED)
        await self.qmp("cont")
        self.state = VmState.RUNNING
        if self._disk_fdset is not None:
            await self._drop_stale_fdsets()

    async def stop(self) -> None:
        if self.state is VmState.STOPPED and self._pid is None:
            return
        alive = not self._exited.is_set()
        self.state = VmState.STOPPED
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await self._qmp.disconnect()
            self._qmp = None
        if self._pid is not None and alive:
            # Guest state is being discarded: no need to ask QEMU nicely.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self._watch is not None:
            await self._watch

    async def wait_exit(self) -> int:
        await self._exited.wait()
        assert self._exit_status is not None
        return self._exit_status

    @property
    def exited(self) -> asyncio.Event:
        return self._exited

    def failure_report(self, what: str) -> str:
        """An error message with what QEMU and the guest console said last."""
        parts = [what]
        if self._exit_status is not None:
            parts[0] += f" (exit status {self._exit_status})"
        if self._oom_killed:
            limit = self._limits().memory_bytes >> 20
            parts.insert(
                0,
                f"the sandbox went over its memory limit ({limit} MiB: the guest's "
                f"{self.spec.memory_mib} MiB of RAM and its VMM's own), so the host's kernel ended its VMM",
            )
        with contextlib.suppress(OSError):
            qemu_said = self.qemu_log.read_text(errors="replace").strip()[-2000:]
            if qemu_said:
                parts.append(f"QEMU said:\n{qemu_said}")
        console = self.console_tail().strip()
        if console:
            parts.append(f"guest console (last lines):\n{console}")
        return "\n".join(parts)


def _own(uid: int, run_dir: Path, disk: Path) -> None:
    """Hand the jailed VMM what it writes, and only to it: its run directory and disk layer."""
    os.chown(run_dir, uid, uid)
    run_dir.chmod(0o700)
    os.chown(disk, uid, uid)
    disk.chmod(0o600)


def _make_transfer_disk(path: Path, uid: int | None) -> None:
    """An empty transfer disk (a restart's leftover emptied), the VMM's to write and the daemon's."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, TRANSFER_DISK_BYTES)
        if uid is not None:
            os.fchown(fd, uid, uid)
    finally:
        os.close(fd)


def _freeze_file(layer: Path) -> None:
    """A frozen disk layer: the daemon's, readable by every VMM, written by none."""
    os.chown(layer, 0, 0) if os.geteuid() == 0 else None
    layer.chmod(0o444)


def running_qemu_pid(run_dir: Path) -> int | None:
    """The pid of the QEMU serving ``run_dir``, if one is alive (checked by its command line)."""
    try:
        pid = int((run_dir / "qemu.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"qemu" in cmdline and str(run_dir).encode() in cmdline else None
