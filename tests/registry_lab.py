"""A registry on loopback for the tests: Debian's docker-registry behind token auth.

The registry trusts one self-signed certificate; a small token server (a thread
here) checks Basic credentials and answers with a JWT signed by that
certificate's key, carrying the certificate in its ``x5c`` header and the
access the scope asked for: the registry's token flow, end to end, with no
network beyond 127.0.0.1. Both stop when the context ends.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "ember-test-registry"
ISSUER = "ember-test-tokens"
USER, PASSWORD = "tester", "s3cret-" + secrets.token_hex(4)


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    user: str
    password: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Signer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def token(self, access: list[dict[str, object]]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 600, "nbf": now - 60,
            "iat": now, "jti": secrets.token_hex(8), "access": access,
        }  # fmt: skip
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _token_handler(signer: _Signer) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            query = parse_qs(urlsplit(self.path).query)
            access = []
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            body = json.dumps({"token": signer.token(access)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def token_registry(directory: Path) -> Iterator[Registry]:
    """docker-registry on a free loopback port, token auth from a token server of our own."""
    signer = _Signer()
    (directory / "cert.pem").write_bytes(signer.cert.public_bytes(serialization.Encoding.PEM))
    tokens = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(signer))
    thread = threading.Thread(target=tokens.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    config = f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {directory / "storage"}
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: http://127.0.0.1:{tokens.server_address[1]}/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {directory / "cert.pem"}
"""
    (directory / "config.yml").write_text(config)
    log = (directory / "registry.log").open("wb")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(directory / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((directory / "registry.log").read_text()) from None
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", USER, PASSWORD)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        tokens.shutdown()
        tokens.server_close()


def push(layout: Path, tag: str, registry: Registry, repository: str) -> str:
    """Copy an OCI layout's image into the registry with skopeo; returns its reference."""
    reference = f"{registry.host}/{repository}:{tag}"
    subprocess.run(
        [
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
            "--dest-creds", f"{registry.user}:{registry.password}",
            f"oci:{layout}:{tag}", f"docker://{reference}",
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return reference


def docker_archive(layout: Path, tag: str, archive: Path) -> Path:
    """The image as ``docker save`` writes it (skopeo's docker-archive)."""
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{archive}:test/{tag}:latest"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return archive
