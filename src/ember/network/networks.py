"""Sandbox networks as the engine sees them: attach one to a VM, change its policy, take it away.

``Networks`` ties the parts together for one daemon: the host side (namespace,
links, nftables: ``host``), the sandbox's DNS (``resolver``) and its name-checked
proxy (``proxy``), served by an unprivileged process of their own on sockets the
daemon binds (``services``), and the VM's NIC backend (a tap handed to QEMU).
A ``Lease`` is one sandbox's attached network; the guest is told its address
through the agent by the sandbox itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ember.network import host
from ember.network.host import Addressing, HostNetwork, ServicePorts
from ember.network.packages import PackageSources, host_package_sources
from ember.network.policy import DomainRules, NetworkPolicy
from ember.network.services import rules_to_wire
from ember.network.services_client import Launcher, ServicesClient
from ember.protocol.messages import PackageRegistries
from ember.settings import Settings

log = logging.getLogger("ember.network")

PACKAGE_SOURCES_TTL_S = 300.0


class Nic(Protocol):
    """The VM side: plug a host tap device into the guest's NIC, or unplug it."""

    async def attach_nic(self, tap_fd: int) -> None: ...

    async def detach_nic(self) -> None: ...


@dataclass
class Lease:
    """One sandbox's network: where it is and what it may reach now."""

    sandbox_id: str
    addressing: Addressing
    policy: NetworkPolicy
    rules: DomainRules
    ports: ServicePorts | None = None
    served: bool = False
    #: The registries the guest's package managers are pointed at (the ``packages`` switch).
    registries: PackageSources | None = None

    def guest_config(self) -> dict[str, str]:
        """What the agent configures in the guest (its interface, route and resolver)."""
        return {"address": f"{self.addressing.guest_ip}/30", "gateway": self.addressing.gateway}

    def guest_registries(self) -> PackageRegistries | None:
        """What the guest's pip, npm and apt are pointed at: the host's registries, with
        the ``packages`` switch (None without)."""
        sources = self.registries
        if sources is None:
            return None
        return PackageRegistries(
            pip_index_url=sources.pip_index_url,
            pip_extra_index_urls=list(sources.pip_extra_index_urls),
            pip_trusted_hosts=list(sources.pip_trusted_hosts),
            npm_registry=sources.npm_registry,
            debian_mirror=sources.debian_mirror,
        )


class Networks:
    """Every sandbox network of one daemon (see the module docstring)."""

    def __init__(self, settings: Settings, launch: Launcher, debian_mirror: Callable[[], str | None]) -> None:
        """``debian_mirror`` names the mirror a guest's apt is pointed at (read with the rest)."""
        self.host = HostNetwork(settings.network_cidr, settings.instance)
        log_path = settings.data_dir / "network-services.log"
        self.services = ServicesClient(launch, settings.dns_upstream, log_path)
        self._debian_mirror = debian_mirror
        self._package_sources: tuple[float, PackageSources] | None = None

    async def attach(self, sandbox_id: str, nic: Nic, policy: NetworkPolicy) -> Lease:
        """Give a running VM a network under ``policy``; on failure nothing is left."""
        addressing = await self.host.create(sandbox_id)
        lease = Lease(sandbox_id, addressing, policy, DomainRules())
        try:
            await self._serve(lease)
            tap = await self.host.open_tap(sandbox_id, addressing)
            try:
                await nic.attach_nic(tap)
            finally:
                os.close(tap)  # the VM holds its own
            await self.host.add_tap(sandbox_id, addressing)
            await self.update(lease, policy)
        except BaseException:
            await self.detach(lease, nic)
            raise
        return lease

    async def adopt(self, sandbox_id: str, slot: int, policy: NetworkPolicy) -> Lease:
        """Take over the network a previous daemon made for a sandbox that is still running."""
        lease = Lease(sandbox_id, Addressing(slot, self.host.cidr), policy, DomainRules())
        await self.host.prepare_host()
        try:
            await self._serve(lease)
            await self.update(lease, policy)
        except BaseException:
            await self._stop_services(lease)
            raise
        return lease

    async def update(self, lease: Lease, policy: NetworkPolicy) -> None:
        """Apply a new (enabled) policy to an attached network; established connections carry on."""
        assert lease.ports is not None
        registries = await self.package_sources() if policy.packages else None
        rules = DomainRules.of(policy, registries.hosts() if registries is not None else ())
        denied = [*host.ALWAYS_DENIED, str(self.host.cidr), *await host.host_addresses()]
        await self.host.apply(lease.sandbox_id, lease.addressing, policy, lease.ports, denied)
        await self.services.update(lease.sandbox_id, {"rules": rules_to_wire(rules), "denied": denied})
        lease.policy, lease.rules, lease.registries = policy, rules, registries

    async def detach(self, lease: Lease, nic: Nic | None) -> None:
        """Unplug and remove everything of the lease. Never raises: it runs on teardown paths."""
        if nic is not None:
            with contextlib.suppress(Exception):
                await nic.detach_nic()
        await self._stop_services(lease)
        try:
            await self.host.remove(lease.sandbox_id, lease.addressing.slot)
        except Exception:
            log.exception("removing the network of sandbox %s failed", lease.sandbox_id)

    async def remove_leftovers(self, keep: set[str]) -> None:
        """Delete the namespaces a previous run of this daemon left for sandboxes now gone."""
        prefix = f"ember-{self.host.instance}-"
        for netns in self.host.leftover_namespaces(keep):
            log.info("removing leftover sandbox network %s", netns)
            try:
                await self.host.remove(netns[len(prefix) :], None)
            except Exception:
                log.exception("removing leftover sandbox network %s failed; remove it by hand", netns)

    async def close(self) -> None:
        await self.services.close()
        await self.host.release_host()

    async def package_sources(self) -> PackageSources:
        """This host's package registries, read again every few minutes (configs change)."""
        now = time.monotonic()
        if self._package_sources is None or now - self._package_sources[0] > PACKAGE_SOURCES_TTL_S:
            sources = await asyncio.to_thread(lambda: host_package_sources(self._debian_mirror()))
            self._package_sources = (now, sources)
        return self._package_sources[1]

    async def _serve(self, lease: Lease) -> None:
        """Bind the sandbox's DNS, HTTP and TLS sockets on its host-side address and have the
        services process answer on them, refusing everything until ``update``."""
        address = lease.addressing.host_ip
        sockets = (
            _bound(socket.SOCK_DGRAM, address),
            _bound(socket.SOCK_STREAM, address),
            _bound(socket.SOCK_STREAM, address),
        )
        dns, http, tls = (s.getsockname()[1] for s in sockets)
        lease.ports = ServicePorts(dns=dns, http=http, tls=tls)
        try:
            await self.services.serve(lease.sandbox_id, sockets, {"rules": {}, "denied": []})
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        lease.served = True

    async def _stop_services(self, lease: Lease) -> None:
        if lease.served:
            lease.served = False
            await self.services.stop(lease.sandbox_id)


def _bound(kind: socket.SocketKind, address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock
