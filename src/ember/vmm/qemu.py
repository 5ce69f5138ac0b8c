"""The QEMU driver: a ``microvm`` machine controlled over QMP.

Decisions the command line encodes (measured in notes/qemu-tcg-facts.md):
- ``-M microvm,acpi=off``: our kernel has no ACPI, and only with ACPI off does
  QEMU put the virtio-mmio devices on the kernel command line.
- guest RAM is a ``memory-backend-file`` in the VM's run directory, shared, so a
  snapshot can later keep the file itself as the memory image.
- the base image is attached read-only and shared by every VM; the per-VM disk
  is the overlay's upper layer.
- the agent channel is a virtio-serial port named ``ember.agent`` on a unix
  socket; the console goes to a log file read back for error messages.
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
QEMU runs in its own session so that it outlives a daemon crash; the daemon finds
it again through the pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from qemu.qmp import QMPClient, QMPError

from ember.errors import BootFailedError, VmmError
from ember.settings import Settings
from ember.vmm import clock, ram
from ember.vmm.accel import Acceleration
from ember.vmm.base import AGENT_PORT_NAME, VirtualMachine, VmSpec, VmState

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
_NIC_PORT, _UPLINK, _UPLINK_PORT = "nic0", "uplink0", "uplink0port"
#: Every guest's MAC: each sandbox's link is its own (a tap in its own namespace).
GUEST_MAC = "02:e0:00:00:00:02"


def kernel_args(accel: Acceleration) -> tuple[str, ...]:
    """The guest kernel's fixed command line on this host (all but the TSC rate)."""
    return (*KERNEL_ARGS, "norandmaps") if accel.kind == "tcg" else KERNEL_ARGS


class QemuVM(VirtualMachine):
    """One QEMU process running one microVM."""

    def __init__(
        self, spec: VmSpec, settings: Settings, accel: Acceleration, tsc_khz: int | None = None
    ) -> None:
        self.spec = spec
        self.state = VmState.STOPPED
        self._settings = settings
        self._accel = accel
        self._tsc_khz = tsc_khz
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._qmp: QMPClient | None = None
        self._exit_status: int | None = None
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
    def pid(self) -> int | None:
        return self._pid

    # ------------------------------------------------------------ command line

    def _clock_args(self) -> tuple[str, ...]:
        """Pin the guest clocksource to the TSC when its frequency is known (see ember.vmm.clock)."""
        return (f"tsc_early_khz={self._tsc_khz}",) if self._tsc_khz else ()

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
            accel, cpu = f"tcg,tb-size={self._settings.tcg_tb_size_mib}", "max"
        memory = f"{spec.memory_mib}M"
        return [
            self._settings.qemu_binary,
            "-name", f"ember,process=ember-{spec.run_dir.name}",
            "-M", "microvm,acpi=off,memory-backend=mem",
            "-accel", accel,
            "-cpu", cpu,
            "-m", memory,
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-object", f"memory-backend-file,id=mem,size={memory},mem-path={spec.memory_file},"
                       f"share={'on' if spec.memory_shared else 'off'}",
            *self._boot_args(),
            "-chardev", f"file,id=console,path={self.console_log},append=on",
            "-serial", "chardev:console",
            "-drive", f"id=root,file={spec.rootfs},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            "-drive", f"id=rw,file={spec.disk},format={spec.disk_format},if=none,cache=unsafe,discard=unmap",
            "-device", "virtio-blk-device,drive=rw",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,path={self.agent_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
            # The NIC is always there (a restored VM needs the device set it was saved
            # with) but plugged into an empty hub: a network is a tap added at run time.
            "-netdev", f"hubport,id={_NIC_PORT},hubid=0",
            "-device", f"virtio-net-device,netdev={_NIC_PORT},mac={GUEST_MAC}",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=rng0",
            # No free page reporting: QEMU 7.2 answers a report by punching holes in
            # the memory *file*, even under a private (copy-on-write) mapping, which
            # would corrupt the snapshot that every restored sandbox maps.
            "-device", "virtio-balloon-device",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-pidfile", str(spec.run_dir / "qemu.pid"),
            # Saved states are devices only, in the stream format that a restore loads.
            "-global", "migration.send-configuration=off",
            # A restored VM waits for its state, then `cont`.
            *(("-S", "-incoming", "defer") if spec.restore is not None else ()),
        ]  # fmt: skip

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.require(VmState.STOPPED)
        if shutil.which(self._settings.qemu_binary) is None:
            raise VmmError(
                f"{self._settings.qemu_binary} not found; install Debian's qemu-system-x86 package"
            )
        self.spec.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = VmState.BOOTING
        with self.qemu_log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        self._pid = self._process.pid
        await self._take_control()

    async def load(self) -> None:
        """Load the saved device state into this fresh QEMU (started with -incoming defer).

        The RAM is the spec's memory file, mapped before the load; the state
        holds devices only (see ``save``). The VM stays paused for ``resume``.

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
            await self.qmp("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(restore.state))}"})
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
        return ram.Capture(self._pid, self.spec.memory_file)

    def written_ram(self, capture: ram.Capture) -> ram.Pages:
        if self.state is not VmState.PAUSED or capture.pid != self._pid:
            raise VmmError("written RAM is read from this VM, paused")
        return capture.read()

    async def _freeze_disk(self, next_disk: Path) -> None:
        arguments = {
            "device": "rw",
            "snapshot-file": str(next_disk),
            "format": "qcow2",
            "mode": "absolute-paths",
        }
        await self.qmp("blockdev-snapshot-sync", arguments)

    async def attach_nic(self, tap: str) -> None:
        """Create host tap ``tap`` and join it to the guest NIC's hub."""
        await self.qmp(
            "netdev_add", {"type": "tap", "id": _UPLINK, "ifname": tap, "script": "no", "downscript": "no"}
        )
        try:
            await self.qmp(
                "netdev_add", {"type": "hubport", "id": _UPLINK_PORT, "hubid": 0, "netdev": _UPLINK}
            )
        except VmmError:
            await self.qmp("netdev_del", {"id": _UPLINK})
            raise

    async def detach_nic(self) -> None:
        """Unplug the tap (QEMU deletes it); the guest's NIC stays, linked to nothing."""
        for netdev in (_UPLINK_PORT, _UPLINK):
            with contextlib.suppress(VmmError):
                await self.qmp("netdev_del", {"id": netdev})

    async def adopt(self) -> None:
        """Take over the QEMU a previous daemon started for this spec (found by its pid file).

        Raises VmmError when no such QEMU is running; the caller then cleans up.
        """
        self.require(VmState.STOPPED)
        pid = running_qemu_pid(self.spec.run_dir)
        if pid is None:
            raise VmmError(f"no QEMU is running for {self.spec.run_dir}")
        self._pid = pid
        self.state = VmState.BOOTING
        await self._take_control()

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
                client = QMPClient(f"qmp-{self.spec.run_dir.name}")
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

        A pidfd works for an adopted QEMU too, which is not our child; its exit
        status is then unknown (-1).
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
        self._exit_status = self._process.wait() if self._process is not None else -1
        if self.state is not VmState.STOPPED:
            self.state = VmState.DEAD
        self._exited.set()

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
        with contextlib.suppress(OSError):
            qemu_said = self.qemu_log.read_text(errors="replace").strip()[-2000:]
            if qemu_said:
                parts.append(f"QEMU said:\n{qemu_said}")
        console = self.console_tail().strip()
        if console:
            parts.append(f"guest console (last lines):\n{console}")
        return "\n".join(parts)


def running_qemu_pid(run_dir: Path) -> int | None:
    """The pid of the QEMU serving ``run_dir``, if one is alive (checked by its command line)."""
    try:
        pid = int((run_dir / "qemu.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"qemu" in cmdline and str(run_dir).encode() in cmdline else None


class QemuDriver:
    """Makes QEMU VMs with the acceleration chosen once for this host."""

    name = "qemu"
    #: The machine and device set a saved VM state belongs to: a state saved under
    #: another one cannot be loaded. Change it whenever ``command_line``'s devices change.
    #: 4: TCG guests boot with the host's TSC frequency (``ember.vmm.clock``), and
    #: saved states hold devices only, without the configuration section.
    machine_abi = "qemu-microvm-4"

    def __init__(self, settings: Settings, accel: Acceleration) -> None:
        self.settings = settings
        self.accel = accel
        # Under KVM the guest has kvm-clock; only a TCG guest needs the host's TSC rate.
        self.tsc_khz = clock.host_tsc_khz() if accel.kind == "tcg" else None
        self.kernel_args = " ".join(kernel_args(accel))

    def create(self, spec: VmSpec) -> QemuVM:
        return QemuVM(spec, self.settings, self.accel, self.tsc_khz)
