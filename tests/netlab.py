"""A small internet for network tests, made of real kernel parts and gone after the test.

A network namespace joined to the root namespace by a veth pair holds HTTP, HTTPS, TCP echo and DNS
servers (``netlab_server.py``) on three addresses, so that egress tests can reach named hosts,
allowed and denied, without leaving the machine. ``test_internet()`` starts it, checks that it answers
from the root namespace and removes all of it (server, namespace, veth, files) on exit.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.resolver
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ember.bench.cluster_lab import claim_subnet

SERVER = Path(__file__).with_name("netlab_server.py")
START_TIMEOUT = 15.0  # seconds; a loaded 2-core machine starts Python slowly
NAMES = {"allowed.test": 2, "other.test": 3, "denied.test": 4, "*.wild.test": 3}  # -> last octet
NETNS_DEVICE = "eth0"  # the veth end inside the namespace


@dataclass(frozen=True)
class TestInternet:
    """A running lab, as the root namespace sees it."""

    __test__ = False  # not a pytest test class

    netns: str  # the servers' namespace, for ``ip netns exec``
    veth: str  # the root end of the veth pair
    root_address: str  # 10.213.<n>.1, the root end's address and the namespace's gateway
    dns_server: str
    dns_port: int
    hosts: dict[str, str]  # name -> address; a ``*.suffix`` name stands for every name under suffix
    cert_pem: Path  # self-signed certificate of the HTTPS server: the CA to trust
    files: Path  # files/<name>/<path> is served at http(s)://<name>/<path> (see netlab_server.py)

    def resolve(self, name: str) -> str:
        """The A record of ``name`` from the lab's DNS server; raises ``dns.resolver.NXDOMAIN`` for others."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.dns_server]
        resolver.port = self.dns_port
        return resolver.resolve(name, "A", lifetime=5.0)[0].address

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the lab's certificate and nothing else."""
        return ssl.create_default_context(cafile=self.cert_pem)


@contextlib.contextmanager
def test_internet() -> Iterator[TestInternet]:
    """Starts a lab and yields it once its servers answer; removes all of it on exit, even on errors."""
    hexid = secrets.token_hex(3)
    netns, veth = f"etl-{hexid}", f"etl{hexid}"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{netns}-")))
        _ip("netns", "add", netns)
        stack.callback(_ip, "netns", "delete", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", NETNS_DEVICE, "netns", netns)
        # Deleted before the namespace: a namespace's devices go asynchronously, the root end would linger.
        stack.callback(_ip, "link", "delete", veth)
        _ip("link", "set", veth, "up")
        prefix = f"10.213.{claim_subnet(veth, '10.213', int(hexid, 16) % 256)}"
        _ip("address", "add", f"{prefix}.1/24", "dev", veth, "noprefixroute")
        for octet in (2, 3, 4):
            _ip("-n", netns, "address", "add", f"{prefix}.{octet}/24", "dev", NETNS_DEVICE)
        for device in ("lo", NETNS_DEVICE):
            _ip("-n", netns, "link", "set", device, "up")
        _ip("-n", netns, "route", "add", "default", "via", f"{prefix}.1")

        hosts = {name: f"{prefix}.{octet}" for name, octet in NAMES.items()}
        cert, key = _write_certificate(workdir, hosts)
        log, files = workdir / "server.log", workdir / "files"
        files.mkdir()
        command = ["ip", "netns", "exec", netns, sys.executable, str(SERVER), "--dns", f"{prefix}.2"]
        command += ["--cert", str(cert), "--key", str(key), "--files", str(files)]
        command += [f"--host={n}={a}" for n, a in hosts.items()]
        with log.open("wb") as stderr:
            # Own process group: a Ctrl-C stops the test, and the test stops the server by closing its stdin.
            server = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, process_group=0
            )
        stack.callback(_stop, server)
        lab = TestInternet(netns, veth, f"{prefix}.1", f"{prefix}.2", 53, hosts, cert, files)
        _wait_until_answering(lab, server, log)
        yield lab


test_internet.__test__ = False  # type: ignore[attr-defined]  # not a pytest test where imported


def leftovers(lab: TestInternet) -> list[str]:
    """What of ``lab`` still exists: nothing once ``test_internet()`` has returned."""
    found = []
    if lab.netns in _ip("netns", "list").stdout.split():
        found.append(f"netns {lab.netns}")
    if _ip("link", "show", lab.veth, check=False).returncode == 0:
        found.append(f"link {lab.veth}")
    if lab.cert_pem.parent.exists():
        found.append(f"directory {lab.cert_pem.parent}")
    marker = f"{SERVER}\0--dns\0{lab.dns_server}\0".encode()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                found.append(f"process {entry.name}")
    return found


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Closes the server's stdin, which it takes as the order to exit; kills it if it does not."""
    assert server.stdin is not None
    server.stdin.close()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _write_certificate(workdir: Path, hosts: dict[str, str]) -> tuple[Path, Path]:
    """A self-signed certificate for every lab name and address, which tests trust as their only CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netlab")])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in sorted(set(hosts.values()))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _wait_until_answering(lab: TestInternet, server: subprocess.Popen[bytes], log: Path) -> None:
    """Polls HTTP until the server is up, then checks HTTP, HTTPS and DNS once from the root namespace."""
    deadline = time.monotonic() + START_TIMEOUT
    ip = lab.dns_server
    with httpx.Client(verify=lab.ssl_context(), trust_env=False, timeout=2.0) as client:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"netlab server exited with {server.returncode}:\n{log.read_text()}")
            try:
                http = client.get(f"http://{ip}/").raise_for_status().text
                break
            except httpx.TransportError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"netlab server silent ({error}):\n{log.read_text()}") from error
                time.sleep(0.05)
        https = client.get(
            f"https://{ip}/", headers={"Host": "allowed.test"}, extensions={"sni_hostname": "allowed.test"}
        )
        answers = (http, https.raise_for_status().text, lab.resolve("allowed.test"))
    expected = (f"netlab {ip} {ip}\n", f"netlab allowed.test {ip}\n", lab.hosts["allowed.test"])
    if answers != expected:
        raise RuntimeError(f"netlab answers {answers}, expected {expected}:\n{log.read_text()}")
