"""A sandbox's network on the host: its namespace, links, addresses and nftables rules.

Each sandbox with a network gets a slot ``N`` and, from it, 8 addresses of the
network CIDR and two links: a veth pair ``evN`` (host side) / ``uplink`` (in
the sandbox's namespace ``ember-<instance>-<id>``), and QEMU's tap ``etN``,
moved into that namespace, whose far end is the guest's NIC::

    guest .6 --tap etN .5-- [netns: nft filter + DNAT] --uplink .2 / evN .1-- host --NAT--> out

A slot is taken by creating ``evN``: the kernel refuses a name that exists, so
two daemons on one host never share one. Every rule of a sandbox lives in its
own namespace and goes with it; the host keeps one NAT table per daemon. The
namespace's rules refuse, whatever the policy, the host's own addresses, every
sandbox address, loopback, link-local (cloud metadata) and multicast, and they
send DNS to the daemon's resolver and, for allowlists, HTTP(S) to its proxy,
which checks the name the connection asks for (``proxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import json
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from ember import errors
from ember.network.policy import NetworkPolicy

log = logging.getLogger("ember.network")

NETNS_DIR = Path("/run/netns")
SLOT_SIZE = 8
# Refused whatever the policy (besides the host's own addresses and the sandbox CIDR).
ALWAYS_DENIED = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "255.255.255.255/32")
_COMMAND_TIMEOUT_S = 20.0
_SET = "type ipv4_addr; flags interval; auto-merge;"
_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Addressing:
    """The addresses and link names of slot ``slot`` in ``cidr``."""

    slot: int
    cidr: ipaddress.IPv4Network

    def _at(self, offset: int) -> ipaddress.IPv4Address:
        return self.cidr.network_address + self.slot * SLOT_SIZE + offset

    @property
    def host_ip(self) -> str:
        return str(self._at(1))

    @property
    def uplink_ip(self) -> str:
        return str(self._at(2))

    @property
    def gateway(self) -> str:
        return str(self._at(5))

    @property
    def guest_ip(self) -> str:
        return str(self._at(6))

    @property
    def guest_net(self) -> str:
        return f"{self._at(4)}/30"

    @property
    def host_link(self) -> str:
        return f"ev{self.slot}"

    @property
    def tap(self) -> str:
        return f"et{self.slot}"


@dataclass(frozen=True)
class ServicePorts:
    """Where the daemon listens, on the slot's host address, for this sandbox's DNS and proxies."""

    dns: int
    http: int
    tls: int


class HostNetwork:
    """Makes and removes sandbox namespaces for one daemon instance (named after its data dir)."""

    def __init__(self, cidr: str, instance: str) -> None:
        self.cidr = ipaddress.IPv4Network(cidr)
        self.instance = instance
        self._slots = self.cidr.num_addresses // SLOT_SIZE
        self._host_ready = False

    @property
    def nat_table(self) -> str:
        return f"ember_{self.instance}"

    def netns(self, sandbox_id: str) -> str:
        return f"ember-{self.instance}-{sandbox_id}"

    # ------------------------------------------------------------ host-wide

    async def prepare_host(self) -> None:
        """Forwarding on and this daemon's NAT table, once; idempotent across restarts."""
        if self._host_ready:
            return
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        rules = (
            f"table ip {self.nat_table} {{}}\n"
            f"delete table ip {self.nat_table}\n"
            f"table ip {self.nat_table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {self.cidr} oifname != "ev*" masquerade\n'
            "  }\n"
            "}\n"
        )
        await run("nft", "-f", "-", stdin=rules)
        self._host_ready = True

    async def release_host(self) -> None:
        """Remove this daemon's NAT table (sandbox namespaces are removed one by one)."""
        if self._host_ready:
            with contextlib.suppress(errors.NetworkError):
                await run("nft", "delete", "table", "ip", self.nat_table)
            self._host_ready = False

    def leftover_namespaces(self, keep: set[str]) -> list[str]:
        """This instance's namespaces whose sandbox is not in ``keep`` (a crashed daemon's)."""
        prefix = f"ember-{self.instance}-"
        try:
            names = [p.name for p in NETNS_DIR.iterdir()]
        except FileNotFoundError:
            return []
        return [n for n in names if n.startswith(prefix) and n[len(prefix) :] not in keep]

    # ------------------------------------------------------------ one sandbox

    async def create(self, sandbox_id: str) -> Addressing:
        """Take a free slot, make the namespace and the uplink; the tap comes with ``add_tap``."""
        await self.prepare_host()
        netns = self.netns(sandbox_id)
        addressing = await self._claim_slot()
        link = addressing.host_link
        try:
            await run("ip", "netns", "add", netns)
            script = (
                f"link set {link}p netns {netns}\n"
                f"address add {addressing.host_ip}/30 dev {link}\n"
                f"link set {link} up\n"
                f"route add {addressing.guest_net} via {addressing.uplink_ip} dev {link}\n"
            )
            await run("ip", "-batch", "-", stdin=script)
            inside = (
                "link set lo up\n"
                f"link set {link}p name uplink\n"
                f"address add {addressing.uplink_ip}/30 dev uplink\n"
                "link set uplink up\n"
                f"route add default via {addressing.host_ip}\n"
            )
            await run("ip", "-n", netns, "-batch", "-", stdin=inside)
            await self.in_netns(netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        except BaseException:
            await self.remove(sandbox_id, addressing.slot)
            raise
        return addressing

    async def open_tap(self, sandbox_id: str, addressing: Addressing) -> int:
        """Make the tap ``etN`` in the sandbox's namespace; it lives while its descriptor is open."""
        return await _in_thread(partial(_open_tap, NETNS_DIR / self.netns(sandbox_id), addressing.tap))

    async def add_tap(self, sandbox_id: str, addressing: Addressing) -> None:
        """Address the tap (plugged into the VM) as the guest's gateway and bring it up."""
        inside = f"address add {addressing.gateway}/30 dev {addressing.tap}\nlink set {addressing.tap} up\n"
        await run("ip", "-n", self.netns(sandbox_id), "-batch", "-", stdin=inside)

    async def apply(
        self,
        sandbox_id: str,
        addressing: Addressing,
        policy: NetworkPolicy,
        ports: ServicePorts,
        denied: list[str],
    ) -> None:
        """Replace the namespace's rules with ``policy``'s, in one nftables transaction."""
        rules = ruleset(addressing, policy, ports, denied)
        await self.in_netns(self.netns(sandbox_id), "nft", "-f", "-", stdin=rules)

    async def remove(self, sandbox_id: str, slot: int | None) -> None:
        """Delete the links and the namespace (its tap and rules go with it). Idempotent.

        The host end goes first: a namespace's devices are freed asynchronously,
        so deleting only the namespace would leave ``evN`` behind for a while.
        """
        if slot is not None and Path(f"/sys/class/net/ev{slot}").exists():
            with contextlib.suppress(errors.NetworkError):
                await run("ip", "link", "delete", f"ev{slot}")
        netns = self.netns(sandbox_id)
        if (NETNS_DIR / netns).exists():
            await run("ip", "netns", "delete", netns)

    async def in_netns(self, netns: str, *argv: str, stdin: str | None = None) -> str:
        return await run("nsenter", f"--net={NETNS_DIR / netns}", *argv, stdin=stdin)

    async def _claim_slot(self) -> Addressing:
        taken = {name for name in os.listdir("/sys/class/net") if name.startswith("ev")}
        # Slot 0 would put a sandbox on the CIDR's network address.
        for slot in range(1, self._slots):
            if f"ev{slot}" in taken:
                continue
            try:
                await run("ip", "link", "add", f"ev{slot}", "type", "veth", "peer", "name", f"ev{slot}p")
            except errors.NetworkError as exc:
                if "File exists" in str(exc):
                    continue  # another daemon took it a moment ago
                raise
            return Addressing(slot, self.cidr)
        raise errors.ResourceExhaustedError(f"no free sandbox network address left in {self.cidr}")


def ruleset(addressing: Addressing, policy: NetworkPolicy, ports: ServicePorts, denied: list[str]) -> str:
    """The namespace's nftables rules for ``policy`` (pure text, so that it can be tested alone).

    Traffic the policy refuses is rejected (a TCP reset, an ICMP error), never
    dropped, so that a client fails at once instead of waiting for a timeout.
    """
    a, tap = addressing, f'"{addressing.tap}"'
    allowed = ", ".join(policy.cidrs)
    lines = [
        "table ip ember {}",
        "delete table ip ember",
        "table ip ember {",
        f"  set denied {{ {_SET} elements = {{ {', '.join(denied)} }} }}",
    ]
    if allowed:
        lines.append(f"  set allowed {{ {_SET} elements = {{ {allowed} }} }}")
    lines += [
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f"    iifname {tap} ip daddr {a.gateway} udp dport 53 dnat to {a.host_ip}:{ports.dns}",
    ]
    if policy.mode == "allowlist":
        skip = "ip daddr != @allowed " if allowed else ""
        lines += [
            f"    iifname {tap} {skip}tcp dport 80 dnat to {a.host_ip}:{ports.http}",
            f"    iifname {tap} {skip}tcp dport 443 dnat to {a.host_ip}:{ports.tls}",
        ]
    lines += [
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        # The daemon reaching the guest: exposed ports.
        f'    iifname "uplink" oifname {tap} ip saddr {a.host_ip} accept',
        f"    iifname {tap} ip daddr {a.host_ip} udp dport {ports.dns} accept",
        f"    iifname {tap} ip daddr {a.host_ip} tcp dport {{ {ports.http}, {ports.tls} }} accept",
        f"    iifname {tap} ip daddr @denied reject with icmp type admin-prohibited",
    ]
    if policy.mode == "full":
        lines.append(f"    iifname {tap} accept")
    elif allowed:
        lines.append(f"    iifname {tap} ip daddr @allowed accept")
    lines += [
        f"    iifname {tap} meta l4proto tcp reject with tcp reset",
        f"    iifname {tap} reject with icmp type admin-prohibited",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        "    ct state established,related accept",
        '    iifname "lo" accept',
        f"    iifname {tap} meta l4proto tcp reject with tcp reset",
        f"    iifname {tap} reject with icmp type admin-prohibited",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


async def host_addresses() -> list[str]:
    """Every IPv4 address of the host's own interfaces (the daemon's port among their services)."""
    try:
        links = json.loads(await run("ip", "-j", "-4", "address", "show"))
    except (errors.NetworkError, ValueError):
        return []
    return [
        info["local"]
        for link in links
        for info in link.get("addr_info", [])
        if info.get("family") == "inet" and "local" in info
    ]


async def run(*argv: str, stdin: str | None = None) -> str:
    """Run one host network command; NetworkError carries its output."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise errors.NetworkError(
            f"{argv[0]} not found; install Debian's iproute2 and nftables packages"
        ) from exc
    try:
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), _COMMAND_TIMEOUT_S
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise errors.NetworkError(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


_T = TypeVar("_T")


async def _in_thread(work: Callable[[], _T]) -> _T:
    """Run ``work`` in a thread of its own that ends with it: a thread that entered a
    sandbox's network namespace must never go back to a pool."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def run_it() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run_it, name="ember-netns", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[_T], result: _T | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _open_tap(netns: Path, name: str) -> int:
    namespace = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(namespace, _CLONE_NEWNET) != 0:  # this thread only, which then ends
            error = ctypes.get_errno()
            raise errors.NetworkError(f"entering {netns} failed: {os.strerror(error)}")
    finally:
        os.close(namespace)
    tap = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        request = struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(tap, _TUNSETIFF, request)
    except OSError as exc:
        os.close(tap)
        raise errors.NetworkError(f"creating tap {name} in {netns} failed: {exc}") from exc
    return tap
