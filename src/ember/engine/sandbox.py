"""A sandbox: one microVM, its agent connection, and what a caller can do with it.

The sandbox owns its VM, its agent client and the task that watches the VM; it
groups its abilities as sub-objects (``code``, ``commands``, ``pty``, ``files``)
that all reach the guest through ``agent_call``, the one place that turns a
lost connection into "the sandbox died" with the guest console's last words.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from ember import errors
from ember.engine.channel import AgentClient
from ember.engine.code import Code
from ember.engine.commands import Commands, Pty
from ember.engine.files import Files
from ember.protocol.messages import AgentInfo, Configure
from ember.vmm.base import VirtualMachine, VmSpec

log = logging.getLogger("ember.engine")

BOOT_TIMEOUT_S = 90.0


class SandboxState(enum.Enum):
    BOOTING = "booting"
    RUNNING = "running"
    STOPPED = "stopped"
    DEAD = "dead"


@dataclass(frozen=True)
class SandboxConfig:
    """What the caller asked for; validated by the manager before a VM exists."""

    vcpus: int = 2
    memory_mib: int = 512
    disk_mib: int = 4096
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


class Sandbox:
    """One live (or ended) sandbox; see the module docstring."""

    def __init__(self, sandbox_id: str, config: SandboxConfig, vm: VirtualMachine, data_dir: Path) -> None:
        self.id = sandbox_id
        self.config = config
        self.vm = vm
        self.data_dir = data_dir
        self.state = SandboxState.BOOTING
        self.created_at = time.time()
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.boot_seconds: float | None = None
        self.agent_info: AgentInfo | None = None
        self._agent = AgentClient(f"sandbox {sandbox_id}")
        self._watch: asyncio.Task[None] | None = None
        self.code = Code(self)
        self.commands = Commands(self)
        self.pty = Pty(self)
        self.files = Files(self)

    @property
    def hostname(self) -> str:
        return f"ember-{self.id[:12]}"

    def require_running(self) -> None:
        if self.state is SandboxState.RUNNING:
            return
        if self.state is SandboxState.DEAD:
            raise errors.SandboxDeadError(f"sandbox {self.id} is dead: {self.end_reason}")
        raise errors.SandboxNotRunningError(f"sandbox {self.id} is {self.state.value}")

    # ------------------------------------------------------------ lifecycle

    async def boot(self) -> None:
        """Start the VM and wait for the agent; on any failure leave nothing running."""
        started = time.perf_counter()
        try:
            await self.vm.start()
            self._watch = asyncio.create_task(self._watch_vm(), name=f"watch-{self.id}")
            await self._connect(BOOT_TIMEOUT_S)
        except BaseException as exc:
            report = self._vm_report("boot failed")
            await self.destroy("boot failed")
            if isinstance(exc, errors.EmberError) and not isinstance(exc, errors.AgentUnavailableError):
                raise
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                raise
            raise errors.BootFailedError(f"{report}\n(cause: {exc})") from exc
        self.boot_seconds = time.perf_counter() - started
        self.state = SandboxState.RUNNING

    async def _connect(self, timeout_s: float) -> None:
        connect = asyncio.create_task(self._agent.connect(str(self.vm.agent_socket)))
        died = asyncio.create_task(self.vm.wait_exit())
        try:
            done, _ = await asyncio.wait(
                {connect, died}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            died.cancel()
        if connect not in done:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            what = (
                "the VM exited before its agent answered"
                if died in done
                else (f"the guest agent did not answer within {timeout_s:.0f} s")
            )
            raise errors.BootFailedError(self._vm_report(what))
        connect.result()
        info = await self._agent.request(self._identity())
        self.agent_info = AgentInfo.from_wire(info)

    async def reconnect(self) -> None:
        """Drop the agent connection and open a fresh one, as a restarted daemon does.

        Processes in the guest keep running across it; their output waits in the
        guest's buffers for the next ``attach``.
        """
        self.require_running()
        await self._agent.close()
        await self._agent.connect(str(self.vm.agent_socket))

    def _identity(self) -> Configure:
        return Configure(
            env=dict(self.config.env),
            hostname=self.hostname,
            time_ns=time.time_ns(),
            entropy_b64=base64.b64encode(secrets.token_bytes(64)).decode(),
        )

    async def _watch_vm(self) -> None:
        status = await self.vm.wait_exit()
        if self.state in (SandboxState.RUNNING, SandboxState.BOOTING):
            self.state = SandboxState.DEAD
            self.ended_at = time.time()
            self.end_reason = self._vm_report(f"the VM exited unexpectedly (status {status})")
            log.warning("sandbox %s died: %s", self.id, self.end_reason)
        await self._agent.close()

    def _vm_report(self, what: str) -> str:
        return self.vm.failure_report(what)

    async def destroy(self, reason: str = "deleted") -> None:
        """End the sandbox and remove everything it had on the host. Idempotent."""
        if self.state is not SandboxState.DEAD:
            self.state = SandboxState.STOPPED
            self.end_reason = self.end_reason or reason
        self.ended_at = self.ended_at or time.time()
        await self._agent.close()
        await self.vm.stop()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        shutil.rmtree(self.vm.spec.run_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # ------------------------------------------------------------ the one path to the guest

    @contextlib.asynccontextmanager
    async def agent_call(self) -> AsyncIterator[AgentClient]:
        """The agent client, for one operation; a lost connection becomes SandboxDeadError."""
        self.require_running()
        try:
            yield self._agent
        except (errors.AgentUnavailableError, errors.ProtocolError) as exc:
            # The VM is probably going down: give it a moment so the error can say why.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.vm.wait_exit(), 2.0)
            if self.state is SandboxState.DEAD:
                raise errors.SandboxDeadError(f"sandbox {self.id} died: {self.end_reason}") from exc
            raise

    @staticmethod
    def vm_spec(config: SandboxConfig, kernel: Path, rootfs: Path, disk: Path, run_dir: Path) -> VmSpec:
        return VmSpec(
            vcpus=config.vcpus,
            memory_mib=config.memory_mib,
            kernel=kernel,
            rootfs=rootfs,
            writable_disk=disk,
            run_dir=run_dir,
        )
