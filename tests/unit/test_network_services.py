"""The network services process, unjailed on loopback: it answers on the daemon's sockets, and a
restarted one answers on the same ports with the same rules."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import dns.message
import dns.rcode

from ember.network.policy import DomainRules
from ember.network.services import rules_from_wire, rules_to_wire
from ember.network.services_client import ServicesClient
from ember.vmm.jail import Jailer


def test_rules_cross_the_wire_unchanged():
    some = DomainRules(frozenset({"a.test"}), (".b.test",))
    for rules in (some, DomainRules(everything=True), DomainRules()):
        assert rules_from_wire(rules_to_wire(rules)) == rules


def _sockets() -> tuple[socket.socket, socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    listeners = []
    for _ in range(2):
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        listeners.append(tcp)
    return udp, listeners[0], listeners[1]


def _rcode(port: int, name: str) -> int:
    query = dns.message.make_query(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(query.to_wire(), ("127.0.0.1", port))
        return dns.message.from_wire(client.recv(512)).rcode()


async def test_a_restarted_services_process_answers_on_the_same_sockets(tmp_path):
    jailer = Jailer()
    client = ServicesClient(lambda argv, fds: jailer.spawn(argv, fds, None), "127.0.0.1:9", tmp_path / "log")
    sockets = _sockets()
    port = sockets[0].getsockname()[1]
    try:
        await client.serve("sbx", sockets, {"rules": {}, "denied": []})
        assert await asyncio.to_thread(_rcode, port, "denied.test") == dns.rcode.NXDOMAIN
        # HTTP to a name the rules refuse: a 403 from the proxy, not a hang.
        reader, writer = await asyncio.open_connection("127.0.0.1", sockets[1].getsockname()[1])
        writer.write(b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 403")
        writer.close()
        first = client.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)
        allowed = rules_to_wire(DomainRules(frozenset({"ok.test"})))
        await client.update("sbx", {"rules": allowed, "denied": []})
        assert client.pid not in (None, first), "a new process took over"
        # Same port, new rules: the refused name still gets NXDOMAIN at once.
        assert await asyncio.to_thread(_rcode, port, "still-denied.test") == dns.rcode.NXDOMAIN
        await client.stop("sbx")
        assert all(s.fileno() == -1 for s in sockets), "the daemon's copies are closed with the sandbox"
    finally:
        await client.close()
        await jailer.close()
