"""The sandboxes' DNS resolvers and name proxies, in a process of their own, unprivileged.

They parse what guests send (DNS queries, the first bytes of HTTP and TLS
connections), so they do not run in the root daemon: ``python -m
ember.network.services UPSTREAM`` runs jailed as a uid of its own, in the host's
network namespace (it answers on the sandboxes' host-side addresses and reaches
the upstream resolver and the allowed names) but with nothing else of the
daemon's. Its control socket is fd 3 (SOCK_SEQPACKET): the daemon binds each
sandbox's three sockets itself (so their ports stay the same if this process
is started again) and sends them with its rules, one JSON message each:

- ``{"op": "serve", "id": ..., "rules": ..., "denied": [...]}`` with the DNS, HTTP
  and TLS sockets attached: start answering on them;
- ``{"op": "update", ...}`` without sockets: new rules for established listeners;
- ``{"op": "stop", "id": ...}``: close them.

Each is answered ``{"ok": true}`` or ``{"error": ...}``. At end of file it exits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import sys
from dataclasses import dataclass, field

from ember.network.policy import DomainRules
from ember.network.proxy import NameProxy
from ember.network.resolver import Resolver, Upstream

log = logging.getLogger("ember.network")

CONTROL_FD = 3
MAX_MESSAGE_BYTES = 1 << 20


@dataclass
class Served:
    """One sandbox's listeners and the rules they apply now."""

    rules: DomainRules = field(default_factory=DomainRules)
    denied: list[ipaddress.IPv4Network] = field(default_factory=list)
    resolver: Resolver | None = None
    proxy: NameProxy | None = None

    def is_denied(self, address: ipaddress.IPv4Address) -> bool:
        return any(address in network for network in self.denied)

    async def close(self) -> None:
        for service in (self.resolver, self.proxy):
            if service is not None:
                await service.close()


def rules_to_wire(rules: DomainRules) -> dict[str, object]:
    return {"exact": sorted(rules.exact), "suffixes": list(rules.suffixes), "everything": rules.everything}


def rules_from_wire(data: dict[str, object]) -> DomainRules:
    return DomainRules(
        frozenset(data.get("exact", ())),  # type: ignore[arg-type]
        tuple(data.get("suffixes", ())),  # type: ignore[arg-type]
        bool(data.get("everything", False)),
    )


class Services:
    """Every sandbox's listeners in this process, driven by the daemon's messages."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.served: dict[str, Served] = {}

    async def handle(self, message: dict[str, object], sockets: list[socket.socket]) -> dict[str, object]:
        sandbox_id, op = str(message.get("id")), message.get("op")
        if op == "serve" and len(sockets) == 3:
            await self._stop(sandbox_id)
            served = self.served[sandbox_id] = Served()
            self._apply(served, message)
            dns, http, tls = sockets
            served.resolver = await Resolver.serve(dns, self.upstream, lambda: served.rules)
            served.proxy = NameProxy(self.upstream, lambda: served.rules, served.is_denied)
            await served.proxy.serve(http, tls)
        elif op == "update" and sandbox_id in self.served:
            self._apply(self.served[sandbox_id], message)
        elif op == "stop":
            await self._stop(sandbox_id)
        else:
            return {"error": f"cannot {op} for sandbox {sandbox_id} with {len(sockets)} sockets"}
        return {"ok": True}

    @staticmethod
    def _apply(served: Served, message: dict[str, object]) -> None:
        served.rules = rules_from_wire(message.get("rules") or {})  # type: ignore[arg-type]
        served.denied = [ipaddress.IPv4Network(n) for n in message.get("denied") or ()]  # type: ignore[union-attr]

    async def _stop(self, sandbox_id: str) -> None:
        served = self.served.pop(sandbox_id, None)
        if served is not None:
            await served.close()

    async def close(self) -> None:
        for sandbox_id in list(self.served):
            await self._stop(sandbox_id)


async def _serve_forever(upstream: str | None) -> None:
    services = Services(Upstream(upstream or None))
    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(False)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(control.fileno(), readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE_BYTES, 3)
                except BlockingIOError:
                    break
                if not data:
                    return  # the daemon is gone
                sockets = [socket.socket(fileno=fd) for fd in fds]
                try:
                    reply = await services.handle(json.loads(data), sockets)
                except (OSError, ValueError) as exc:
                    reply = {"error": str(exc)}
                control.send(json.dumps(reply).encode())
    finally:
        loop.remove_reader(control.fileno())
        await services.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve_forever(sys.argv[1] if len(sys.argv) > 1 else None))


if __name__ == "__main__":
    main()
