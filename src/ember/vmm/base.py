"""What every VMM driver offers the engine: start a VM from a spec, control it, end it.

A driver knows its VMM's command line or API; the engine only sees ``VmSpec`` in
and a ``VirtualMachine`` out, with the path of the agent channel's socket and the
guest console log. One small state enum per VM, one guard for operations.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import SandboxNotRunningError
from ember.vmm import ram

AGENT_PORT_NAME = "ember.agent"


class VmState(enum.Enum):
    BOOTING = "booting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DEAD = "dead"


@dataclass(frozen=True)
class Restore:
    """Start a VM from saved device state (``save``) instead of booting it; its RAM
    is the spec's memory file."""

    state: Path


@dataclass(frozen=True)
class VmSpec:
    """Everything needed to start one VM. Paths are owned by the caller.

    ``memory_shared``: the guest RAM *is* ``memory_file`` (the VM's own file, so a
    snapshot can keep it); otherwise the VM maps ``memory_file`` copy-on-write and
    never writes it (a restored snapshot, shared by every VM restored from it).
    """

    vcpus: int
    memory_mib: int
    kernel: Path
    rootfs: Path
    disk: Path
    run_dir: Path
    memory_file: Path
    memory_shared: bool = True
    disk_format: str = "raw"
    #: The frozen layers under ``disk`` (read-only to the VM), top first.
    backing: tuple[Path, ...] = ()
    restore: Restore | None = None
    kernel_args: tuple[str, ...] = field(default_factory=tuple)


class VirtualMachine(abc.ABC):
    """One running (or ended) VM. ``state`` says which operations fit."""

    spec: VmSpec
    state: VmState

    @property
    @abc.abstractmethod
    def agent_socket(self) -> Path:
        """Unix socket on which the host reaches the guest agent."""

    @property
    @abc.abstractmethod
    def console_log(self) -> Path: ...

    @property
    @abc.abstractmethod
    def pid(self) -> int | None: ...

    @property
    def transfer_disk(self) -> Path | None:
        """The transfer disk's file (``ember.protocol.extents``), if the VM has one."""
        return None

    @property
    @abc.abstractmethod
    def disk(self) -> Path:
        """The disk layer the VM writes now (a ``save`` moves it on to the next one)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Launch the VMM; returns once it runs (the guest may still be booting), or,
        for a restore, once it waits for ``load``."""

    @abc.abstractmethod
    async def load(self) -> None:
        """Load a restore's saved state once the host's agent connection is open (see
        the driver); the VM then waits, paused, for ``resume``."""

    @abc.abstractmethod
    async def adopt(self, chain: list[Path]) -> Path:
        """Take over this spec's VM, started by a previous daemon; VmmError if it is gone.

        ``chain`` is its disk chain as recorded, top first. A daemon killed in a
        snapshot's pause leaves the VM paused, and maybe still writing the layer
        below the top it recorded (the next layer is recorded before the VM moves
        onto it): the VM is resumed, and the layer it really writes is returned.
        """

    @abc.abstractmethod
    async def save(self, state: Path, next_disk: Path) -> None:
        """Pause the VM and save its devices (not its RAM) into ``state``; its disk
        is frozen where it is (read-only from then on, to everyone) and the VM goes
        on writing to ``next_disk``, an empty overlay on it that the caller made.
        The VM is left paused, for the caller to take its RAM: the
        shared memory file copied, or a restored VM's ``written_ram`` laid over a
        copy of the file it maps, before ``resume``.
        """

    @abc.abstractmethod
    async def devices_unchanged(self, state: Path) -> bool:
        """Save the paused VM's devices into ``state`` again; True when nothing changed.

        A stopped VM's devices still serve the host: virtio-serial takes what the
        host sends and writes it into guest buffers, so guest RAM taken after the
        devices were saved may be ahead of them. Equal device state on both sides
        of the RAM capture means no device touched RAM in between.
        """

    @abc.abstractmethod
    def ram_capture(self) -> ram.Capture:
        """Prepare, while it runs, to read the RAM a restored VM wrote over its memory file."""

    @abc.abstractmethod
    def memory_image(self) -> Path:
        """Where the RAM a restored VM maps can be read (to copy it for its next snapshot)."""

    @abc.abstractmethod
    def written_ram(self, capture: ram.Capture) -> ram.Pages:
        """``(offset, contents)`` of the RAM the paused VM wrote, read with ``capture``."""

    @abc.abstractmethod
    async def attach_nic(self, tap_fd: int) -> None:
        """Connect the guest's NIC to the open host tap device ``tap_fd`` (the caller keeps
        its own descriptor and closes it)."""

    @abc.abstractmethod
    async def detach_nic(self) -> None:
        """Disconnect the guest's NIC from its tap (which goes away). Idempotent."""

    @abc.abstractmethod
    async def pause(self) -> None: ...

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """End the VM at once and release what the VMM held. Idempotent."""

    @abc.abstractmethod
    async def wait_exit(self) -> int:
        """Wait until the VMM process has exited; returns its exit status."""

    def require(self, *states: VmState) -> None:
        """The one guard: raise a clear error when an operation does not fit the state."""
        if self.state not in states:
            allowed = ", ".join(s.value for s in states)
            raise SandboxNotRunningError(f"VM is {self.state.value}; this needs it {allowed}")

    def console_tail(self, max_bytes: int = 4096) -> str:
        """The last lines the guest printed, for error messages."""
        try:
            with self.console_log.open("rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - max_bytes))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def failure_report(self, what: str) -> str:
        """An error message with the guest console's last lines; drivers add their own logs."""
        console = self.console_tail().strip()
        return f"{what}\nguest console (last lines):\n{console}" if console else what
