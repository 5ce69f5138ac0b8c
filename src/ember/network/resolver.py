"""The guest's DNS: names its policy allows are looked up upstream, the rest do not exist.

One UDP socket per sandbox, bound by the daemon on its host-side address, so the
socket itself says whose policy applies; served in ``ember.network.services``. A
refused name gets NXDOMAIN at once rather than a timeout. Upstream is the host's
resolver, or ``EMBER_DNS_UPSTREAM``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from ember import errors
from ember.network.policy import DomainRules
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.network")

UPSTREAM_TIMEOUT_S = 3.0


class Upstream:
    """The resolver sandboxes' allowed names are looked up at."""

    def __init__(self, spec: str | None) -> None:
        host, port = _parse(spec) if spec else (_system_nameserver(), 53)
        self.host, self.port = host, port
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [host]
        self._resolver.port = port
        self._resolver.lifetime = UPSTREAM_TIMEOUT_S

    async def forward(self, query: dns.message.Message) -> dns.message.Message:
        return await dns.asyncquery.udp(query, self.host, port=self.port, timeout=UPSTREAM_TIMEOUT_S)

    async def addresses(self, name: str) -> list[str]:
        """The IPv4 addresses of ``name``; empty when it does not resolve."""
        try:
            answer = await self._resolver.resolve(name, "A")
        except dns.exception.DNSException:
            return []
        return [record.address for record in answer]


class Resolver(asyncio.DatagramProtocol):
    """One sandbox's DNS server: answers what ``rules()`` allows, NXDOMAIN for the rest."""

    def __init__(self, upstream: Upstream, rules: Callable[[], DomainRules]) -> None:
        self._upstream = upstream
        self._rules = rules
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    async def serve(
        cls, sock: socket.socket, upstream: Upstream, rules: Callable[[], DomainRules]
    ) -> Resolver:
        """Answer on ``sock``, a UDP socket bound to the sandbox's host-side address."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(lambda: cls(upstream, rules), sock=sock)
        protocol._transport = transport  # connection_made comes a loop turn later
        return protocol

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: nothing to answer
        name = query.question[0].name.to_text(omit_final_dot=True) if query.question else ""
        if name and self._rules().allows(name):
            try:
                response = await self._upstream.forward(query)
            except (dns.exception.DNSException, OSError) as exc:
                log.info("DNS upstream failed for %s: %s", name, exc)
                response = _reply(query, dns.rcode.SERVFAIL)
        else:
            response = _reply(query, dns.rcode.NXDOMAIN)
        if self._transport is not None:
            self._transport.sendto(response.to_wire(), addr)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await cancel_and_wait(*self._pending)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response


def _parse(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "53")
    try:
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError as exc:
        raise errors.InvalidRequestError(
            f"EMBER_DNS_UPSTREAM must be 'ip' or 'ip:port', not {spec!r}"
        ) from exc


def _system_nameserver(path: Path = Path("/etc/resolv.conf")) -> str:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                return words[1]
    return "127.0.0.1"
