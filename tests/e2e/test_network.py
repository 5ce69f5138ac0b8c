"""Sandbox networks end to end: policies enforced on real traffic, exposed ports, forks, teardown.

The "internet" is ``netlab``: HTTP, HTTPS, echo and DNS servers in a network
namespace of this machine, which the test daemon resolves through. Probes run
inside the guest with its own Python; a refusal must come back as an error at
once (refused, reset, no such name, 403), never as a timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from e2e_support import (
    DEBIAN_MIRROR,
    NPM_REGISTRY,
    PACKAGE_INDEX,
    PORTS_DOMAIN,
    Daemon,
    SandboxFactory,
    run_cli,
    wait_until,
)
from package_registries import publish_deb, publish_npm_package, publish_wheel
from websockets.sync.client import connect as ws_connect

from ember import Sandbox
from ember.agent.registries import APT_SOURCES, NPM_RC, PIP_CONF
from ember.errors import InvalidRequestError, NetworkDisabledError, PortNotExposedError
from ember.images.debian_tree import DEBIAN_SUITE
from netlab import TestInternet

PROBES = r"""
import socket, ssl, urllib.request, urllib.error

def fetch(url, host=None, cafile=None):
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as answer:
            return answer.read().decode()
    except Exception as exc:
        return f"ERR {type(exc).__name__}: {exc}"

def resolve(name):
    try:
        return socket.gethostbyname(name)
    except Exception as exc:
        return f"ERR {type(exc).__name__}: {exc}"

def tcp(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=20) as sock:
            sock.sendall(b"ping\n")
            return "OK " + sock.recv(100).decode()
    except Exception as exc:
        return f"ERR {type(exc).__name__}: {exc}"

def tls(ip, name, cafile):
    try:
        context = ssl.create_default_context(cafile=cafile)
        with socket.create_connection((ip, 443), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname=name) as sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                return "OK " + sock.recv(4096).decode().split("\r\n\r\n", 1)[-1]
    except Exception as exc:
        return f"ERR {type(exc).__name__}: {exc}"
"""

GUEST_SERVER = Path(__file__).with_name("guest_web_server.py")
GUEST_APT_SOURCES = f"/{APT_SOURCES}"
LAB_PACKAGE = "ember-lab-greet"
REGISTRIES = (PACKAGE_INDEX, NPM_REGISTRY, DEBIAN_MIRROR)


def probe(sandbox: Sandbox, expression: str) -> str:
    execution = sandbox.run_code(f"print({expression})")
    assert execution.error is None, execution.error
    return execution.stdout.strip()


def refused(answer: str) -> bool:
    """An error that came at once: the policy's refusal, not a connection left hanging."""
    return answer.startswith("ERR") and "timed out" not in answer


def with_probes(sandbox: Sandbox, internet: TestInternet) -> Sandbox:
    sandbox.files.write("/tmp/lab.pem", internet.cert_pem.read_bytes())
    execution = sandbox.run_code(PROBES)
    assert execution.error is None, execution.error
    return sandbox


def namespaces() -> set[str]:
    return {
        line.split()[0]
        for line in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True
        ).stdout.splitlines()
        if line.startswith("ember-")
    }


def host_addresses() -> list[str]:
    links = json.loads(subprocess.run(["ip", "-j", "-4", "address"], capture_output=True, text=True).stdout)
    return [a["local"] for link in links for a in link["addr_info"] if not a["local"].startswith("127.")]


def test_no_network_interface_by_default(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory()
    assert sandbox.info().network["mode"] == "none"
    assert sandbox.info().network["address"] is None
    links = sandbox.commands.run("ls /sys/class/net").stdout.split()
    assert not [link for link in links if link not in ("lo", "sit0")], links
    assert "inet " not in sandbox.commands.run("ip -4 address show scope global").stdout


def test_full_network_reaches_test_hosts(sandbox_factory: SandboxFactory, internet: TestInternet) -> None:
    sandbox = with_probes(sandbox_factory(network="full"), internet)
    info = sandbox.info().network
    assert info["mode"] == "full" and info["address"]
    assert probe(sandbox, "resolve('allowed.test')") == internet.hosts["allowed.test"]
    assert probe(sandbox, "fetch('http://allowed.test/')").startswith("netlab allowed.test")
    https = probe(sandbox, "fetch('https://denied.test/', cafile='/tmp/lab.pem')")
    assert https.startswith("netlab denied.test"), https
    assert probe(sandbox, f"tcp('{internet.hosts['other.test']}', 7)") == "OK ping"


def test_allowlist_lets_named_domains_and_cidrs_through_and_refuses_the_rest(
    sandbox_factory: SandboxFactory, internet: TestInternet
) -> None:
    other, denied = internet.hosts["other.test"], internet.hosts["denied.test"]
    policy = {"domains": ["allowed.test", "*.wild.test"], "cidrs": [f"{other}/32"]}
    sandbox = with_probes(sandbox_factory(network=policy), internet)
    assert sandbox.info().network["mode"] == "allowlist"

    # Allowed: the names over HTTP and HTTPS (checked on the connection), the CIDR on any port.
    assert probe(sandbox, "fetch('http://allowed.test/')").startswith("netlab allowed.test")
    allowed_tls = probe(sandbox, "fetch('https://allowed.test/', cafile='/tmp/lab.pem')")
    assert allowed_tls.startswith("netlab allowed.test"), allowed_tls
    assert probe(sandbox, "fetch('http://api.wild.test/')").startswith("netlab api.wild.test")
    assert probe(sandbox, f"tcp('{other}', 7)") == "OK ping"

    # Refused at once: the denied name does not resolve; its address, dialled directly, is
    # refused whatever the protocol, and a claimed allowed name only reaches the allowed host.
    assert refused(answer := probe(sandbox, "resolve('denied.test')")) and "gaierror" in answer
    assert refused(answer := probe(sandbox, f"fetch('http://{denied}/', host='denied.test')")), answer
    assert "403" in answer
    assert refused(answer := probe(sandbox, f"tls('{denied}', 'denied.test', '/tmp/lab.pem')")), answer
    assert refused(answer := probe(sandbox, f"tcp('{denied}', 7)")), answer
    via_ip = probe(sandbox, f"fetch('http://{denied}/', host='allowed.test')")
    assert via_ip.startswith("netlab allowed.test") and internet.hosts["allowed.test"] in via_ip, via_ip


@pytest.fixture
def registries(internet: TestInternet) -> Iterator[None]:
    """The registries the test daemon's host is configured with, served by test hosts: a
    package index, an npm registry and a Debian mirror, each with one package."""
    index, npm, debian = (internet.files / str(urlsplit(url).hostname) for url in REGISTRIES)
    publish_wheel(index / "simple", LAB_PACKAGE, "1.0", "GREETING = 'hello from the lab index'\n")
    publish_npm_package(
        npm, NPM_REGISTRY, LAB_PACKAGE, "1.0.0", "module.exports = 'hello from the lab registry';\n"
    )
    suites = [DEBIAN_SUITE, f"{DEBIAN_SUITE}-updates"]  # what the guest's apt source names
    publish_deb(debian / "debian", suites, LAB_PACKAGE, "1.0", "#!/bin/sh\necho hello from the lab mirror\n")
    yield
    for site in (index, npm, debian):
        shutil.rmtree(site)


def test_packages_switch_installs_with_pip_npm_and_apt_from_the_hosts_registries(
    sandbox_factory: SandboxFactory, internet: TestInternet, registries: None
) -> None:
    sandbox = sandbox_factory(network={"packages": True})

    def run(command: str) -> str:
        result = sandbox.commands.run(command, timeout=600)
        assert result.exit_code == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout

    run(f"pip install {LAB_PACKAGE}")
    module = LAB_PACKAGE.replace("-", "_")
    assert run(f"python3 -c 'import {module}; print({module}.GREETING)'") == "hello from the lab index\n"

    run(f"mkdir /tmp/site && cd /tmp/site && npm install --no-audit --no-fund {LAB_PACKAGE}")
    assert run(f"cd /tmp/site && node -p \"require('{LAB_PACKAGE}')\"") == "hello from the lab registry\n"

    sources = sandbox.files.read(GUEST_APT_SOURCES).decode()
    assert f"URIs: {DEBIAN_MIRROR}\n" in sources, sources
    # The lab's mirror is unsigned; a real one carries Debian's signature, which the guest checks.
    sandbox.files.write(GUEST_APT_SOURCES, sources + "Trusted: yes\n")
    run(f"apt-get update && apt-get install --yes {LAB_PACKAGE}")
    assert run(LAB_PACKAGE) == "hello from the lab mirror\n"

    # Nothing else: the switch opens the registries' hosts only.
    assert refused(probe(with_probes(sandbox, internet), "fetch('http://allowed.test/')"))


def test_turning_the_packages_switch_on_points_the_guests_tools_at_the_registries(
    sandbox_factory: SandboxFactory,
) -> None:
    sandbox = sandbox_factory(network={"domains": ["allowed.test"]})
    assert not sandbox.files.exists(f"/{PIP_CONF}")
    sandbox.network.update(packages=True)
    assert f"index-url = {PACKAGE_INDEX}\n" in sandbox.files.read(f"/{PIP_CONF}").decode()
    assert f"registry={NPM_REGISTRY}\n" in sandbox.files.read(f"/{NPM_RC}").decode()
    assert f"URIs: {DEBIAN_MIRROR}\n" in sandbox.files.read(GUEST_APT_SOURCES).decode()


def test_cli_creates_with_a_policy_changes_it_and_exposes_a_port(daemon: Daemon) -> None:
    created = run_cli(
        daemon, "create", "--allow", "allowed.test", "--allow", "10.0.0.0/8", "--timeout", "600"
    )
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    try:
        shown = run_cli(daemon, "network", sandbox_id)
        assert shown.returncode == 0 and shown.stdout.startswith("allowlist"), shown
        assert "allowed.test 10.0.0.0/8" in shown.stdout
        changed = run_cli(daemon, "network", sandbox_id, "full")
        assert changed.returncode == 0 and changed.stdout.startswith("full  address 100."), changed
        exposed = run_cli(daemon, "expose", sandbox_id, "8080")
        assert exposed.returncode == 0 and f"8080-{sandbox_id}" in exposed.stdout, exposed
        bad = run_cli(daemon, "expose", sandbox_id, "70000")
        assert bad.returncode == 1 and "invalid_request" in bad.stderr, bad
        closed = run_cli(daemon, "network", sandbox_id, "none")
        assert closed.returncode == 0 and closed.stdout.startswith("none  address -"), closed
    finally:
        run_cli(daemon, "kill", sandbox_id)


def test_host_services_and_metadata_stay_unreachable(
    sandbox_factory: SandboxFactory, internet: TestInternet, daemon: Daemon
) -> None:
    sandbox = with_probes(sandbox_factory(network="full"), internet)
    port = urlsplit(daemon.url).port
    gateway = probe(
        sandbox,
        "__import__('subprocess').run(['ip','route'],capture_output=True,text=True).stdout.split()[2]",
    )
    targets = [*host_addresses(), gateway, "169.254.169.254"]
    for address in targets:
        answer = probe(sandbox, f"tcp('{address}', {port})")
        assert refused(answer), (address, answer)
    assert refused(probe(sandbox, "fetch('http://169.254.169.254/latest/meta-data/')"))


def test_policy_changes_apply_to_a_running_sandbox(
    sandbox_factory: SandboxFactory, internet: TestInternet
) -> None:
    sandbox = with_probes(sandbox_factory(), internet)
    assert refused(probe(sandbox, "fetch('http://allowed.test/')"))

    sandbox.network.update("full")
    assert probe(sandbox, "fetch('http://allowed.test/')").startswith("netlab allowed.test")

    info = sandbox.network.update(domains=["other.test"])
    assert info["mode"] == "allowlist" and info["domains"] == ["other.test"]
    assert refused(probe(sandbox, "resolve('allowed.test')"))
    assert probe(sandbox, "fetch('http://other.test/')").startswith("netlab other.test")

    sandbox.network.update("none")
    assert sandbox.info().network["address"] is None
    assert "inet " not in sandbox.commands.run("ip -4 address show scope global").stdout


def test_exposed_port_serves_http_and_websocket(sandbox_factory: SandboxFactory, daemon: Daemon) -> None:
    sandbox = sandbox_factory(network="full")
    sandbox.files.write("/app/server.py", GUEST_SERVER.read_bytes())
    sandbox.commands.run("python3 /app/server.py", background=True)
    exposed = sandbox.expose(8000)
    port = urlsplit(daemon.url).port
    assert exposed.url == f"http://8000-{sandbox.id}.{PORTS_DOMAIN}:{port}/"  # the daemon has a domain
    assert [p.port for p in sandbox.network.ports()] == [8000]
    path_url = f"{daemon.url}/v1/sandboxes/{sandbox.id}/ports/8000/"

    with httpx.Client(timeout=30, trust_env=False) as client:
        wait_until(
            lambda: (
                client.get(path_url + "up", headers={"X-Ember-Port-Token": exposed.token}).status_code == 200
            ),
            what="the guest's server answering through the exposed port",
        )
        # Host-based: this machine has no DNS for the domain, so the Host header says it.
        by_host = client.get(
            f"{daemon.url}/hosted",
            headers={"Host": urlsplit(exposed.url).netloc, "X-Ember-Port-Token": exposed.token},
        )
        assert by_host.text == "guest GET /hosted got 0 bytes auth=-"
        by_key = client.get(path_url + "hello?x=1", headers={"Authorization": f"Bearer {daemon.api_key}"})
        assert by_key.text == "guest GET /hello?x=1 got 0 bytes auth=-"  # the Ember key is not forwarded
        body = b"z" * (5 * 1024 * 1024)
        posted = client.post(path_url + "upload", params={"ember_token": exposed.token}, content=body)
        assert posted.text == f"guest POST /upload got {len(body)} bytes auth=-"
        # The token query set a cookie for this port's path (a browser preview's links keep working).
        assert client.get(path_url + "page").text.startswith("guest GET /page")
        assert httpx.get(path_url, trust_env=False).status_code == 401
        wrong = httpx.get(path_url, headers={"X-Ember-Port-Token": "wrong"}, trust_env=False)
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"

        ws_url = path_url.replace("http://", "ws://") + "echo"
        with ws_connect(ws_url, additional_headers={"X-Ember-Port-Token": exposed.token}) as socket:
            socket.send("hello")
            assert socket.recv(timeout=30) == "echo:hello"
            socket.send(b"\x00\x01")
            assert socket.recv(timeout=30) == b"echo:\x00\x01"

        sandbox.network.unexpose(8000)
        closed = client.get(path_url, headers={"X-Ember-Port-Token": exposed.token})
        assert closed.status_code == 404 and closed.json()["code"] == "port_not_exposed"


def test_forks_get_their_own_addresses_and_both_work(
    sandbox_factory: SandboxFactory, internet: TestInternet
) -> None:
    source = with_probes(sandbox_factory(network="full"), internet)
    forks = source.fork(2)
    try:
        addresses = {source.info().network["address"], *(f.info().network["address"] for f in forks)}
        assert len(addresses) == 3 and None not in addresses
        for fork in forks:
            guest = fork.commands.run("ip -4 -o address show scope global").stdout
            assert fork.info().network["address"] in guest
            assert probe(fork, "fetch('http://allowed.test/')").startswith("netlab allowed.test")
        assert probe(source, "fetch('http://allowed.test/')").startswith("netlab allowed.test")
    finally:
        for fork in forks:
            fork.close()


def test_teardown_leaves_no_namespace_or_link(sandbox_factory: SandboxFactory) -> None:
    before = namespaces()
    sandbox = sandbox_factory(network="full")
    mine = namespaces() - before
    assert len(mine) == 1 and sandbox.id in next(iter(mine))
    links_before = set(Path("/sys/class/net").iterdir())
    sandbox.kill()
    wait_until(lambda: not (namespaces() & mine), what="the sandbox's namespace removed")
    gone = links_before - set(Path("/sys/class/net").iterdir())
    assert any(link.name.startswith("ev") for link in gone), "the sandbox's host link stayed"


@pytest.mark.parametrize(
    "policy",
    [
        {"domains": ["not a domain"]},
        {"domains": ["*"]},
        {"cidrs": ["10.0.0.0/33"]},
        {"cidrs": ["fd00::/8"]},
        {"mode": "full", "domains": ["example.com"]},
        {"mode": "sometimes"},
        {"domains": "example.com"},
        {"colour": "blue"},
    ],
)
def test_bad_policies_are_refused_and_change_nothing(
    policy: dict[str, object], sandbox_factory: SandboxFactory, daemon: Daemon
) -> None:
    with pytest.raises(InvalidRequestError):
        Sandbox(network=policy, base_url=daemon.url, api_key=daemon.api_key)
    sandbox = sandbox_factory()
    answer = httpx.put(
        f"{daemon.url}/v1/sandboxes/{sandbox.id}/network",
        json=policy,
        headers={"Authorization": f"Bearer {daemon.api_key}"},
        trust_env=False,
    )
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
    assert sandbox.info().network["mode"] == "none"


def test_bad_ports_and_ports_without_network_are_refused(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory()
    with pytest.raises(NetworkDisabledError):
        sandbox.expose(8000)
    for port in (0, 65536, -1):
        with pytest.raises(InvalidRequestError):
            sandbox.expose(port)
    with pytest.raises(PortNotExposedError):
        sandbox.network.unexpose(8000)
    assert sandbox.network.ports() == []
