"""A sandbox: one microVM, its agent connection, and what a caller can do with it.

The sandbox owns its VM, its agent client and the task that watches the VM; it
groups its abilities as sub-objects (``code``, ``commands``, ``pty``, ``files``)
that all reach the guest through ``agent_call``, the one place that turns a
lost connection into "the sandbox died" with the guest console's last words. A
guest that breaks the agent protocol kills its own sandbox the moment it does
(the channel calls ``_agent_broke_protocol``); the reaper then ends its VM.
Every change of state is written to the store as it happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import secrets
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ember import errors
from ember.engine.channel import AgentClient
from ember.engine.code import Code
from ember.engine.commands import Commands, Pty
from ember.engine.disks import disk_format
from ember.engine.files import Files
from ember.engine.snapshots import Snapshots
from ember.engine.store import SandboxRecord, SnapshotRecord, Store
from ember.network.networks import Lease, Networks
from ember.network.policy import NetworkPolicy
from ember.network.policy import parse as parse_policy
from ember.protocol.messages import AgentInfo, Configure
from ember.tasks import cancel_and_wait
from ember.vmm.base import VirtualMachine, VmSpec, VmState

log = logging.getLogger("ember.engine")

BOOT_TIMEOUT_S = 90.0
RECONNECT_TIMEOUT_S = 15.0
# A synced agent answers its first request in well under a second; never wait forever.
FIRST_ANSWER_TIMEOUT_S = 30.0


class SandboxState(enum.Enum):
    BOOTING = "booting"
    RUNNING = "running"
    POOLED = "pooled"  # running, waiting in the warm pool for a create to take it
    STOPPED = "stopped"  # ended on purpose: deleted, lifetime over, shut down
    DEAD = "dead"  # ended by a failure


@dataclass(frozen=True)
class SandboxConfig:
    """What the caller asked for; validated by the manager before a VM exists."""

    vcpus: int = 2
    memory_mib: int = 512
    disk_mib: int = 4096
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    owner: str | None = None
    template: str | None = None
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    on_timeout: str = "kill"


class Sandbox:
    """One live (or ended) sandbox; see the module docstring."""

    def __init__(
        self,
        record: SandboxRecord,
        vm: VirtualMachine,
        store: Store,
        networks: Networks,
        env: dict[str, str] | None,
    ) -> None:
        self.record = record
        self.vm = vm
        self.env = env
        self.lease: Lease | None = None
        self._networks = networks
        self._network_lock = asyncio.Lock()
        self.agent_info: AgentInfo | None = None
        self.last_active = time.monotonic()
        self._store = store
        self._agent = AgentClient(
            f"sandbox {record.id}", on_violation=self._agent_broke_protocol, transfer_disk=vm.transfer_disk
        )
        self._watch: asyncio.Task[None] | None = None
        self._snapshot_lock = asyncio.Lock()
        self.code = Code(self)
        self.commands = Commands(self)
        self.pty = Pty(self)
        self.files = Files(self)

    # ------------------------------------------------------------ identity and state

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> SandboxState:
        return SandboxState(self.record.state)

    @property
    def hostname(self) -> str:
        return self.record.hostname

    @property
    def end_reason(self) -> str | None:
        return self.record.end_reason

    @property
    def boot_seconds(self) -> float | None:
        return self.record.boot_seconds

    @property
    def network(self) -> NetworkPolicy:
        return parse_policy(self.record.network or None)

    def _set_state(self, state: SandboxState, reason: str | None = None) -> None:
        self.record.state = state.value
        if state in (SandboxState.STOPPED, SandboxState.DEAD):
            self.record.ended_at = self.record.ended_at or time.time()
            self.record.end_reason = self.record.end_reason or reason
        self._store.save(self.record)

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
        self._store.save(self.record)
        try:
            await self.vm.start()
            self._watch = asyncio.create_task(self._watch_vm(), name=f"watch-{self.id}")
            if self.network.enabled:
                await self._attach_network(self.network)
            if self.vm.spec.restore is not None:
                # Connected before the state loads: see QemuVM.load and AgentClient.open.
                await self._agent.open(str(self.vm.agent_socket))
                await self.vm.load()
                await self.vm.resume()
            await self._connect(BOOT_TIMEOUT_S)
            identity = self._agent.request(self._identity())
            self.agent_info = AgentInfo.from_wire(await asyncio.wait_for(identity, FIRST_ANSWER_TIMEOUT_S))
        except BaseException as exc:
            report = self.vm.failure_report("boot failed")
            await self.destroy("boot failed", dead=True)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                raise
            if isinstance(exc, errors.EmberError) and not isinstance(exc, errors.AgentUnavailableError):
                raise
            raise errors.BootFailedError(f"{report}\n(cause: {exc})") from exc
        self.record.boot_seconds = time.perf_counter() - started
        self._set_state(SandboxState.RUNNING)

    async def park(self, warmup: tuple[str, ...]) -> None:
        """Put a freshly restored sandbox in the warm pool: running, but nobody's yet.

        Under TCG a restored guest starts with no translated code, so its first
        requests are slow. What ``warmup`` names runs once here, off the clock: a
        cell (``code``, a scratch one: the user's REPL keeps no variable and no
        execution count of it), a command (``command``). The code they run is the
        code the user's first calls run, and its translation stays in the VMM's
        memory (``Settings.pool_warmup``). Then the guest gets its name, clock and
        entropy again, now that the path is warm (on a cold guest the clock lands
        tens of ms late), and keeps them.
        """
        if "code" in warmup:
            with contextlib.suppress(errors.PythonUnavailableError):  # an image without Python
                await self.code.run("print(1)\n1 + 1", scratch=True)
        if "command" in warmup:
            await self.commands.run("true")
        await self._reidentify()
        self._set_state(SandboxState.POOLED)

    async def hand_over(self, config: SandboxConfig) -> None:
        """Give a pooled sandbox to a caller: their lifetime, metadata, env and network.

        Its name, clock (a TSC clocksource: it does not drift while parked) and
        entropy are its own since ``park``, so without env or a network the
        hand-over asks nothing of the guest.
        """
        started = time.perf_counter()
        record, now = self.record, time.time()
        record.owner, record.metadata, record.template = config.owner, dict(config.metadata), config.template
        record.created_at, record.idle_timeout_s = now, config.idle_timeout_s
        record.on_timeout = config.on_timeout
        record.expires_at = now + config.timeout_s if config.timeout_s is not None else None
        self.env = dict(config.env) if config.env else None
        self._set_state(SandboxState.RUNNING)
        if config.network.enabled:
            await self._attach_network(config.network)
        if self.env is not None or self.lease is not None:
            await self._reidentify()
        record.boot_seconds = time.perf_counter() - started
        self._store.save(record)

    async def adopt(self) -> None:
        """Take over a VM a previous daemon started: watch it and reconnect to its agent."""
        self._watch = asyncio.create_task(self._watch_vm(), name=f"watch-{self.id}")
        try:
            if self.record.net_slot is not None:
                self.lease = await self._networks.adopt(self.id, self.record.net_slot, self.network)
            await self._connect(RECONNECT_TIMEOUT_S)
            self.agent_info = AgentInfo.from_wire(await self._agent.request(self._probe()))
        except BaseException:
            await self.destroy("the daemon restarted and the guest agent no longer answered", dead=True)
            raise
        self._set_state(SandboxState.RUNNING)

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
            # Its own end (cancelled, or failed) is no news; a cancellation of ours still is.
            await asyncio.gather(connect, return_exceptions=True)
            if died in done:
                what = "the VM exited before its agent answered"
            else:
                what = f"the guest agent did not answer within {timeout_s:.0f} s"
            raise errors.BootFailedError(self.vm.failure_report(what))
        connect.result()

    async def _reidentify(self) -> None:
        """Tell the guest its name, the time, fresh entropy (and env when there is one)."""
        async with self.agent_call() as agent:
            await agent.request(self._identity())

    def _identity(self) -> Configure:
        return Configure(
            env=dict(self.env) if self.env is not None else None,
            hostname=self.hostname,
            time_ns=time.time_ns(),
            entropy_b64=base64.b64encode(secrets.token_bytes(64)).decode(),
            # The agent remembers what its interface has and skips a repeat (agent/network.py).
            network=self.lease.guest_config() if self.lease is not None else {},
            registries=self.lease.guest_registries() if self.lease is not None else None,
        )

    @staticmethod
    def _probe() -> Configure:
        # Changes nothing in the guest; answers with the agent's info.
        return Configure()

    # ------------------------------------------------------------ network

    async def set_network(self, policy: NetworkPolicy) -> None:
        """Apply a new network policy to the running sandbox: on, off, or other rules."""
        async with self._network_lock:
            self.require_running()
            if policy.enabled and self.lease is None:
                lease = await self._attach_network(policy)
                try:
                    async with self.agent_call() as agent:
                        await agent.request(
                            Configure(network=lease.guest_config(), registries=lease.guest_registries())
                        )
                except BaseException:
                    await self._detach_network()
                    raise
            elif not policy.enabled and self.lease is not None:
                async with self.agent_call() as agent:
                    await agent.request(Configure(network={}))
                await self._detach_network()
            elif self.lease is not None:
                before = self.lease.registries
                await self._networks.update(self.lease, policy)
                if self.lease.registries is not None and self.lease.registries != before:
                    async with self.agent_call() as agent:
                        await agent.request(Configure(registries=self.lease.guest_registries()))
            self.record.network = policy.to_dict()
            if not policy.enabled:
                self.record.ports = {}
            self._store.save(self.record)

    async def _attach_network(self, policy: NetworkPolicy) -> Lease:
        self.lease = lease = await self._networks.attach(self.id, self.vm, policy)
        self.record.network, self.record.net_slot = policy.to_dict(), lease.addressing.slot
        self.record.address = lease.addressing.guest_ip
        self._store.save(self.record)
        return lease

    async def _detach_network(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            await self._networks.detach(lease, self.vm if self.vm.state is not VmState.STOPPED else None)
        self.record.net_slot = self.record.address = None
        self._store.save(self.record)

    def expose(self, port: int) -> str:
        """Let ``port`` of the guest be reached through the daemon; returns its access token."""
        _check_port(port)
        self.require_running()
        if self.lease is None:
            raise errors.NetworkDisabledError(
                f"sandbox {self.id} has no network; give it one (network 'full' or an allowlist) first"
            )
        token = self.record.ports.get(str(port)) or secrets.token_urlsafe(24)
        self.record.ports[str(port)] = token
        self._store.save(self.record)
        return token

    def unexpose(self, port: int) -> None:
        _check_port(port)
        if self.record.ports.pop(str(port), None) is None:
            raise errors.PortNotExposedError(f"port {port} of sandbox {self.id} is not exposed")
        self._store.save(self.record)

    def port_target(self, port: int) -> tuple[str, str]:
        """(guest address, token) of an exposed port, for the daemon's reverse proxy."""
        _check_port(port)
        self.require_running()
        token = self.record.ports.get(str(port))
        if token is None or self.lease is None:
            raise errors.PortNotExposedError(f"port {port} of sandbox {self.id} is not exposed")
        return self.lease.addressing.guest_ip, token

    async def reconnect(self) -> None:
        """Drop the agent connection and open a fresh one, as a restarted daemon does.

        Processes in the guest keep running across it; their output waits in the
        guest's buffers for the next ``attach``.
        """
        self.require_running()
        await self._agent.close()
        await self._agent.connect(str(self.vm.agent_socket))

    async def _watch_vm(self) -> None:
        status = await self.vm.wait_exit()
        if self.state in _LIVE:
            reason = self.vm.failure_report(f"the VM exited unexpectedly (status {status})")
            self._set_state(SandboxState.DEAD, reason)
            log.warning("sandbox %s died: %s", self.id, reason)
        await self._agent.close()

    def _agent_broke_protocol(self, reason: str) -> None:
        # The channel is closed already; the reaper ends the VM of a dead sandbox.
        if self.state in _LIVE:
            self._set_state(SandboxState.DEAD, reason)
            log.warning("sandbox %s died: %s", self.id, reason)

    async def destroy(self, reason: str = "deleted", *, dead: bool = False) -> None:
        """End the sandbox and remove everything it had on the host. Idempotent.

        A record that cannot be written (the state database's disk is full) is
        logged and the teardown goes on: a VM must never outlive its end because
        of it, and the next start's recovery records the end from what it finds.
        """
        if self.state in _LIVE:
            self._recording(self._set_state, SandboxState.DEAD if dead else SandboxState.STOPPED, reason)
        await self._agent.close()
        await self.vm.stop()
        await cancel_and_wait(self._watch)
        self._watch = None
        if self.lease is not None or self.record.net_slot is not None:
            lease = self.lease
            self.lease = None
            if lease is not None:
                await self._networks.detach(lease, None)
            else:  # a previous daemon's, never adopted
                await self._networks.host.remove(self.id, self.record.net_slot)
            self.record.net_slot = self.record.address = None
            self._recording(self._store.save, self.record)
        shutil.rmtree(self.vm.spec.run_dir, ignore_errors=True)

    def _recording(self, write: Callable[..., None], *args: object) -> None:
        try:
            write(*args)
        except sqlite3.Error as exc:
            log.error("sandbox %s: could not record its end (%s); it ends all the same", self.id, exc)

    async def snapshot(
        self,
        snapshots: Snapshots,
        *,
        kind: str = "snapshot",
        metadata: dict[str, str] | None = None,
    ) -> SnapshotRecord:
        """Freeze this sandbox into a new snapshot; it runs on, one snapshot at a time."""
        async with self._snapshot_lock:
            self.require_running()
            self.last_active = time.monotonic()
            return await snapshots.take(self.record, self.vm, kind=kind, metadata=metadata)

    # ------------------------------------------------------------ the one path to the guest

    @contextlib.asynccontextmanager
    async def agent_call(self) -> AsyncIterator[AgentClient]:
        """The agent client, for one operation; a lost connection becomes SandboxDeadError.

        A guest that broke the protocol has ended its sandbox with that reason
        (``_agent_broke_protocol``); its calls fail with the ProtocolError itself.
        """
        self.require_running()
        self.last_active = time.monotonic()
        try:
            yield self._agent
        except errors.AgentUnavailableError as exc:
            # The VM is probably going down: give it a moment so the error can say why.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.vm.wait_exit(), 2.0)
            if self.state is SandboxState.DEAD:
                raise errors.SandboxDeadError(f"sandbox {self.id} died: {self.end_reason}") from exc
            raise
        finally:
            self.last_active = time.monotonic()


_LIVE = (SandboxState.BOOTING, SandboxState.RUNNING, SandboxState.POOLED)


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise errors.InvalidRequestError(f"a port is a number from 1 to 65535, not {port!r}")


def vm_spec(record: SandboxRecord) -> VmSpec:
    """The VM of a booted sandbox, or of any sandbox whose QEMU is already running."""
    return VmSpec(
        vcpus=record.vcpus,
        memory_mib=record.memory_mib,
        kernel=Path(record.kernel),
        rootfs=Path(record.rootfs),
        disk=Path(record.disk_chain[0]),
        disk_format=disk_format(record.disk_chain[0]),
        backing=tuple(Path(layer) for layer in record.disk_chain[1:]),
        run_dir=Path(record.run_dir),
        memory_file=Path(record.memory_file),
        memory_shared=record.memory_shared,
        # The last init= on the kernel's command line is the one it runs.
        kernel_args=(f"init={record.init}",) if record.init else (),
    )
