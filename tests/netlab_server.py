"""The servers of the test internet (tests/netlab.py), run inside its network namespace.

HTTP (80), HTTPS (443), TCP echo (7) on every address of the namespace, and DNS (UDP 53) on one.
The HTTP(S) body, ``netlab <name> <local address>``, tells a test which name and address it really
reached. A name with a directory under ``--files`` is a file server instead (a package registry a
test lays out there): ``FILES/<name>/<path>``, a directory's ``index.html`` or ``index.json``, 404
for the rest. The process stops when its standard input closes, so a parent that dies takes it along.
"""

from __future__ import annotations

import argparse
import mimetypes
import posixpath
import socket
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

CLIENT_TIMEOUT = 10.0  # seconds; a silent client must not hold a thread forever


def lookup(hosts: dict[str, str], name: str) -> str | None:
    """The lab address of ``name``: an exact entry, else the deepest ``*.suffix`` entry above it."""
    name = name.rstrip(".").lower()
    if name in hosts:
        return hosts[name]
    labels = name.split(".")
    for i in range(1, len(labels)):
        wildcard = "*." + ".".join(labels[i:])
        if wildcard in hosts:
            return hosts[wildcard]
    return None


class NameHandler(BaseHTTPRequestHandler):
    """Answers any path with the name the client asked for and the address it reached,
    or, for a name with served files, with the file at the path."""

    files: Path | None = None  # set by main()

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        sni = getattr(self.connection, "netlab_sni", None)
        name = sni or (self.headers.get("Host") or "-").rsplit(":", 1)[0]
        status, content_type = 200, "text/plain"
        body = f"netlab {name} {self.connection.getsockname()[0]}\n".encode()
        site = self.files / name.lower() if self.files is not None else None
        if site is not None and site.is_dir():
            status, content_type, body = served_file(site, self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: stderr is kept for errors, which the lab shows when it fails to start."""


def served_file(site: Path, request_path: str) -> tuple[int, str, bytes]:
    """Status, content type and body for ``request_path`` under ``site`` (never outside it)."""
    relative = posixpath.normpath(unquote(urlsplit(request_path).path)).lstrip("/")
    path = site / relative if relative not in ("", ".") else site
    if path.is_dir():
        path = next(
            (path / index for index in ("index.html", "index.json") if (path / index).is_file()), path
        )
    if not path.is_file() or not path.resolve().is_relative_to(site.resolve()):
        return 404, "text/plain", b"not found\n"
    return 200, mimetypes.guess_type(path.name)[0] or "application/octet-stream", path.read_bytes()


class HTTPSServer(ThreadingHTTPServer):
    """TLS is set up in the request's thread, so a slow handshake does not block ``accept``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, NameHandler)
        self.context = context

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        request.settimeout(CLIENT_TIMEOUT)
        super().finish_request(self.context.wrap_socket(request, server_side=True), client_address)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context that records the SNI name on the socket, for ``NameHandler``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, _ctx: setattr(sock, "netlab_sni", name)
    return context


class EchoHandler(socketserver.StreamRequestHandler):
    """Sends back every byte until the client closes."""

    timeout = CLIENT_TIMEOUT

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class DNSHandler(socketserver.BaseRequestHandler):
    """A for the lab's names, an empty NOERROR for their other types, NXDOMAIN for the rest."""

    server: DNSServer

    def handle(self) -> None:
        data, sock = self.request
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: a resolver retries or gives up, as with a real server
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            address = lookup(self.server.hosts, question.name.to_text())
            if address is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                rrset = response.find_rrset(
                    response.answer, question.name, dns.rdataclass.IN, dns.rdatatype.A, create=True
                )
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, address), ttl=60)
        sock.sendto(response.to_wire(), self.client_address)


class DNSServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hosts: dict[str, str]) -> None:
        super().__init__(address, DNSHandler)
        self.hosts = hosts


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dns", required=True, help="address the DNS server binds")
    parser.add_argument("--cert", required=True, help="PEM certificate for HTTPS")
    parser.add_argument("--key", required=True, help="PEM private key for HTTPS")
    parser.add_argument("--host", action="append", default=[], help="NAME=ADDRESS, NAME may be *.suffix")
    parser.add_argument("--files", type=Path, help="FILES/<name>/... served for <name> over HTTP(S)")
    args = parser.parse_args(argv)
    hosts = dict(entry.lower().split("=", 1) for entry in args.host)
    NameHandler.files = args.files
    http = ThreadingHTTPServer(("0.0.0.0", 80), NameHandler)
    http.daemon_threads = True
    servers: list[socketserver.BaseServer] = [
        http,
        HTTPSServer(("0.0.0.0", 443), tls_context(args.cert, args.key)),
        EchoServer(("0.0.0.0", 7), EchoHandler),
        DNSServer((args.dns, 53), hosts),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.buffer.read()  # until the parent closes it, or dies


if __name__ == "__main__":
    main()
