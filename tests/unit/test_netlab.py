"""The test internet (tests/netlab.py) really answers from the root namespace and leaves nothing behind.

Needs root (network namespaces); the lab starts in about half a second.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import httpx
import pytest

import netlab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.TestInternet]:
    with netlab.test_internet() as lab:
        yield lab


def query(lab: netlab.TestInternet, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), lab.dns_server, port=lab.dns_port, timeout=5)


def get(url: str, name: str, verify: ssl.SSLContext | bool = False) -> str:
    """GET ``url`` asking for host ``name`` (Host header and, over TLS, SNI)."""
    headers, extensions = {"Host": name}, {"sni_hostname": name}
    with httpx.Client(verify=verify, trust_env=False, timeout=5) as client:
        return client.get(url, headers=headers, extensions=extensions).raise_for_status().text


def test_dns_answers_the_lab_names(lab: netlab.TestInternet) -> None:
    prefix = lab.root_address.rsplit(".", 1)[0]
    expected = {"allowed.test": ".2", "other.test": ".3", "denied.test": ".4", "a.b.wild.test": ".3"}
    for name, octet in expected.items():
        response = query(lab, name, "A")
        assert response.rcode() == dns.rcode.NOERROR
        assert [rr.address for rrset in response.answer for rr in rrset] == [prefix + octet]
        assert lab.resolve(name.upper()) == prefix + octet
    aaaa = query(lab, "allowed.test", "AAAA")
    assert (aaaa.rcode(), aaaa.answer) == (dns.rcode.NOERROR, [])
    for name in ("wild.test", "nowhere.test", "example.com"):
        assert query(lab, name, "A").rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(dns.resolver.NXDOMAIN):
        lab.resolve("nowhere.test")


def test_http_names_the_host_and_address_reached(lab: netlab.TestInternet) -> None:
    other = lab.hosts["other.test"]
    assert get(f"http://{other}/any/path?q=1", "other.test") == f"netlab other.test {other}\n"
    denied = lab.hosts["denied.test"]
    assert get(f"http://{denied}/", "x.wild.test") == f"netlab x.wild.test {denied}\n"


def test_a_name_with_files_is_a_file_server(lab: netlab.TestInternet) -> None:
    site = lab.files / "files.wild.test"
    (site / "simple/pkg").mkdir(parents=True)
    (site / "simple/pkg/index.html").write_text("<a href='pkg.whl'>pkg</a>")
    (site / "npm").mkdir()
    (site / "npm/index.json").write_text('{"name": "pkg"}')
    address = lab.hosts["other.test"]
    with httpx.Client(trust_env=False, timeout=5, headers={"Host": "files.wild.test"}) as client:
        page = client.get(f"http://{address}/simple/pkg/")
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html")
        assert page.text == "<a href='pkg.whl'>pkg</a>"
        assert client.get(f"http://{address}/npm").json() == {"name": "pkg"}
        for missing in ("/nothing", "/../../../etc/passwd", "/simple/%2e%2e/%2e%2e/%2e%2e/server.log"):
            assert client.get(f"http://{address}{missing}").status_code == 404
    assert get(f"http://{address}/npm", "other.test") == f"netlab other.test {address}\n"


def test_https_verifies_with_the_lab_certificate(lab: netlab.TestInternet) -> None:
    allowed = lab.hosts["allowed.test"]
    body = get(f"https://{allowed}/", "allowed.test", verify=lab.ssl_context())
    assert body == f"netlab allowed.test {allowed}\n"
    strict = lab.ssl_context()
    strict.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    assert get(f"https://{allowed}/", "a.wild.test", verify=strict) == f"netlab a.wild.test {allowed}\n"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"https://{allowed}/", "allowed.test", verify=ssl.create_default_context())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"https://{allowed}/", "example.com", verify=lab.ssl_context())


def test_tcp_echo(lab: netlab.TestInternet) -> None:
    with socket.create_connection((lab.hosts["other.test"], 7), timeout=5) as sock:
        sock.sendall(b"ping\n")
        assert sock.recv(100) == b"ping\n"


def test_two_labs_coexist_and_go_away_even_after_an_error() -> None:
    with pytest.raises(KeyboardInterrupt), netlab.test_internet() as first, netlab.test_internet() as second:
        assert first.root_address != second.root_address
        assert get(f"http://{second.dns_server}/", "allowed.test").startswith("netlab allowed.test")
        for running in (first, second):  # the check after exit really finds each part while it runs
            kinds = [item.split()[0] for item in netlab.leftovers(running)]
            assert kinds == ["netns", "link", "directory", "process"]
        raise KeyboardInterrupt
    assert netlab.leftovers(first) == []
    assert netlab.leftovers(second) == []


def lab_parts() -> set[str]:
    """Every lab namespace, link and directory on the host, of any run."""
    listed = [run(["ip", "netns", "list"]), run(["ip", "-brief", "link"])]
    names = {word for word in " ".join(listed).split() if word.startswith("etl")}
    return names | {path.name for path in Path(tempfile.gettempdir()).glob("etl-*")}


def run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_a_server_that_cannot_start_is_reported_with_its_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_server.py"
    broken.write_text("import sys\nsys.exit('cannot bind port 80')\n")
    monkeypatch.setattr(netlab, "SERVER", broken)
    before = lab_parts()
    expected = "netlab server exited with 1:\ncannot bind port 80"
    with pytest.raises(RuntimeError, match=expected), netlab.test_internet():
        pytest.fail("a lab without servers was yielded")
    assert lab_parts() == before
