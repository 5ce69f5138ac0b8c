"""Domain rules enforced on the connection: HTTP's Host and TLS's SNI name the destination.

Under an allowlist, the namespace sends the guest's port 80 and 443 connections
here (except to allowed CIDRs). The proxy reads the name the client asks for,
checks it against the policy, resolves it itself and connects to *that*
address: a client that dials a denied domain's IP directly, whatever name it
claims, only ever reaches an allowed name's own servers, or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

from ember.network.policy import DomainRules
from ember.network.resolver import Upstream
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.network")

HEAD_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
MAX_HEAD = 16 * 1024
_CHUNK = 64 * 1024


def tls_server_name(hello: bytes) -> str | None:
    """The SNI host name of a TLS ClientHello record, or None."""
    try:
        if hello[0] != 0x16 or hello[5] != 0x01:  # handshake record, ClientHello
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + struct.unpack_from("!H", hello, pos)[0]  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        end = pos + 2 + struct.unpack_from("!H", hello, pos)[0]
        pos += 2
        while pos + 4 <= end:
            kind, size = struct.unpack_from("!HH", hello, pos)
            pos += 4
            if kind == 0:  # server_name: list length, then (type, length, name)
                if hello[pos + 2] != 0:
                    return None
                length = struct.unpack_from("!H", hello, pos + 3)[0]
                return hello[pos + 5 : pos + 5 + length].decode("ascii").lower()
            pos += size
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


def http_host(head: bytes) -> str | None:
    """The host named by an HTTP/1 request head (Host header, without its port), or None."""
    for line in head.split(b"\r\n")[1:]:
        if not line:
            break
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").lower()
            if host.startswith("["):
                return None  # an IPv6 literal names no domain
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


class NameProxy:
    """One sandbox's HTTP and TLS proxies (two listeners on its host-side address)."""

    def __init__(
        self,
        upstream: Upstream,
        rules: Callable[[], DomainRules],
        denied: Callable[[ipaddress.IPv4Address], bool],
    ) -> None:
        self._upstream = upstream
        self._rules = rules
        self._denied = denied
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, http: socket.socket, tls: socket.socket) -> None:
        """Accept on both listening sockets (bound by the daemon on the sandbox's address)."""
        for sock, is_tls in ((http, False), (tls, True)):
            server = await asyncio.start_server(lambda r, w, t=is_tls: self._accept(r, w, t), sock=sock)
            self._servers.append(server)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, tls))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await asyncio.wait_for(_read_head(reader, tls), HEAD_TIMEOUT_S)
            name = tls_server_name(head) if tls else http_host(head)
            target = await self._target(name)
            if target is None:
                if not tls:
                    writer.write(_refusal(name))
                    await writer.drain()
                return
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(target, 443 if tls else 80), CONNECT_TIMEOUT_S
            )
            upstream_writer.write(head)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("proxied connection ended: %s", exc)
        finally:
            for stream in (writer, upstream_writer):
                if stream is not None:
                    stream.close()

    async def _target(self, name: str | None) -> str | None:
        if name is None or not self._rules().allows(name):
            return None
        for address in await self._upstream.addresses(name):
            if not self._denied(ipaddress.IPv4Address(address)):
                return address
        return None

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        await cancel_and_wait(*self._connections)
        for server in self._servers:
            await server.wait_closed()


async def _read_head(reader: asyncio.StreamReader, tls: bool) -> bytes:
    if tls:
        header = await reader.readexactly(5)
        return header + await reader.readexactly(min(struct.unpack_from("!H", header, 3)[0], MAX_HEAD))
    head = b""
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
        chunk = await reader.read(MAX_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            await sink.drain()
    finally:
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()


def _refusal(name: str | None) -> bytes:
    what = f"{name} is not" if name else "requests without a Host header are not"
    body = f"ember: {what} allowed by this sandbox's network policy\n".encode()
    head = f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body
