"""A real cluster on this one machine: etcd members and Ember hosts, each host in a network namespace.

What the cluster tests and ``ember bench --cluster`` run. A bridge joins network
namespaces made for the lab: each etcd member runs in one of its own, and each
host runs ``ember serve --cluster`` in one of its own, with its own data and run
directories (sharing only the built guest images). A gateway
(``ember serve --cluster --gateway``) listens on loopback: the one endpoint the SDK,
the CLI and E2B's SDK are pointed at. Template ``base`` is built on the first host
only; the others copy it from there when they join.

TLS everywhere but on the gateway's loopback port: a CA of the lab's own
(``ember.bench.pki``) signs every etcd member's and host's certificate; members
require client certificates of each other and of the hosts, hosts serve HTTPS and
check each other's certificates when they forward a call or copy a snapshot.

``kill_host`` is a host's death: its daemon and every process under it (jailer,
QEMUs, network services) SIGKILLed at once. ``close`` stops everything, lets a
killed host's engine clean up after it (a plain restart recovers and ends what it
left: cgroups, uid claims, run directories), removes the namespaces, the bridge
and the directories; ``leftovers`` lists whatever of the lab still exists.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ember.bench.pki import LabCA
from ember.vmm.qemu_driver import qemu_processes

START_TIMEOUT_S = 120.0
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
HOST_PORT = 7070


@dataclass
class Member:
    """One etcd member: its namespace and address, and its process while it runs."""

    name: str
    netns: str
    address: str
    data_dir: Path
    log_path: Path
    scheme: str = "https"
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.address}:{ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.address}:{ETCD_PEER_PORT}"


@dataclass
class Host:
    """One Ember host: its namespace, address, directories and daemon."""

    name: str
    netns: str
    address: str
    data_dir: Path
    run_dir: Path
    log_path: Path
    scheme: str = "https"
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}:{HOST_PORT}"


class ClusterLab:
    """See the module docstring. Use as a context manager, or call ``start`` and ``close``."""

    def __init__(
        self,
        images_dir: Path,
        hosts: int = 3,
        members: int = 3,
        lease_s: int = 3,
        grace_s: float = 5.0,
        pool: str = "",
        tls: bool = True,
    ) -> None:
        self.hexid = secrets.token_hex(3)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"ember-cluster-{self.hexid}-"))
        self.images_dir = images_dir.resolve()
        self.api_key = "cluster-" + secrets.token_hex(12)
        self.bridge = f"ecb{self.hexid}"
        self.prefix = ""
        self._links: list[str] = []
        self._namespaces: list[str] = []
        scheme = "https" if tls else "http"
        #: The lab's own CA; None: plain HTTP everywhere.
        self.ca = LabCA(self.scratch / "pki") if tls else None
        self.members = [
            Member(
                f"e{i}",
                f"ece{self.hexid}{i}",
                "",
                self.scratch / f"etcd-{i}",
                self.scratch / f"etcd-{i}.log",
                scheme,
            )
            for i in range(1, members + 1)
        ]
        self.hosts = [
            Host(
                f"h{i}",
                f"ech{self.hexid}{i}",
                "",
                self.scratch / f"h{i}" / "data",
                Path(tempfile.mkdtemp(prefix=f"ember-cluster-h{i}-", dir="/dev/shm")),
                self.scratch / f"h{i}" / "daemon.log",
                scheme,
            )
            for i in range(1, hosts + 1)
        ]
        self.gateway_port = _free_port()
        self.gateway_log = self.scratch / "gateway.log"
        self.gateway: subprocess.Popen[bytes] | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EMBER_")},
            "EMBER_API_KEY": self.api_key,
            "EMBER_POOL": pool,
            "EMBER_CLUSTER_LEASE_S": str(lease_s),
            "EMBER_CLUSTER_GRACE_S": str(grace_s),
        }
        self.lease_s, self.grace_s = lease_s, grace_s

    @property
    def url(self) -> str:
        """The gateway: the cluster's one endpoint."""
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def __enter__(self) -> ClusterLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ starting

    def start(self, progress: bool = False) -> None:
        say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
        self._network()
        say(f"cluster lab: network {self.prefix}.0/24, starting {len(self.members)} etcd members")
        for member in self.members:
            self.start_member(member)
        say("cluster lab: building template base on the first host")
        self._build_base(self.hosts[0])
        say(f"cluster lab: starting {len(self.hosts)} hosts and a gateway")
        for host in self.hosts:
            self.start_host(host)
        self._start_gateway()
        self.wait_until(self._all_joined, START_TIMEOUT_S, "every host up with template base")

    def _network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.prefix = f"10.215.{claim_subnet(self.bridge, '10.215', int(self.hexid, 16) % 256)}"
        _ip("address", "add", f"{self.prefix}.1/24", "dev", self.bridge, "noprefixroute")
        for index, member in enumerate(self.members, start=1):
            member.address = f"{self.prefix}.{20 + index}"
            self._namespace(member.netns, [member.address])
        for index, host in enumerate(self.hosts, start=1):
            host.address = f"{self.prefix}.{10 + index}"
            self._namespace(host.netns, [host.address])

    def _namespace(self, name: str, addresses: list[str]) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        veth = f"v{name}"[:15]
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        self._links.append(veth)
        _ip("link", "set", veth, "master", self.bridge, "up")
        for address in addresses:
            _ip("-n", name, "address", "add", f"{address}/24", "dev", "eth0")
        for device in ("lo", "eth0"):
            _ip("-n", name, "link", "set", device, "up")

    def start_member(self, member: Member) -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [
            *_in_netns(member.netns), "etcd", "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster, "--initial-cluster-token", f"lab-{self.hexid}",
            "--initial-cluster-state", "new",
        ]  # fmt: skip
        if self.ca is not None:  # members and their clients prove themselves with the lab CA's certificates
            cert, key = self._certificate(member.name, member.address)
            command += [
                "--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(self.ca.cert),
                "--client-cert-auth", "--peer-cert-file", str(cert), "--peer-key-file", str(key),
                "--peer-trusted-ca-file", str(self.ca.cert), "--peer-client-cert-auth",
            ]  # fmt: skip
        with member.log_path.open("ab") as log:
            member.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_member(self, member: Member) -> None:
        """SIGKILL one etcd member (its data stays, so it can start again)."""
        assert member.process is not None
        member.process.kill()
        member.process.wait()
        member.process = None

    def _build_base(self, host: Host) -> None:
        host.data_dir.mkdir(parents=True)
        (host.data_dir / "images").symlink_to(self.images_dir)
        built = subprocess.run(
            [sys.executable, "-m", "ember", "image", "build"],
            env=self._host_env(host),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if built.returncode:
            raise RuntimeError(f"ember image build failed:\n{built.stdout[-2000:]}{built.stderr[-3000:]}")

    def _host_env(self, host: Host) -> dict[str, str]:
        env = {
            **self.env,
            **self._tls_env(host.name, host.address),
            "EMBER_DATA_DIR": str(host.data_dir),
            "EMBER_RUN_DIR": str(host.run_dir),
            "XDG_CONFIG_HOME": str(host.data_dir.parent / "config"),
        }
        if self.ca is not None:  # its API over HTTPS, with the certificate it shows etcd
            env["EMBER_TLS_CERT"], env["EMBER_TLS_KEY"] = env["EMBER_ETCD_CERT"], env["EMBER_ETCD_KEY"]
        return env

    def _tls_env(self, name: str, address: str) -> dict[str, str]:
        """A member's certificate for etcd, and the CA it checks etcd and the hosts against."""
        if self.ca is None:
            return {}
        cert, key = self._certificate(name, address)
        ca = str(self.ca.cert)
        return {
            "EMBER_ETCD_CA": ca,
            "EMBER_ETCD_CERT": str(cert),
            "EMBER_ETCD_KEY": str(key),
            "EMBER_CLUSTER_CA": ca,
        }

    def _certificate(self, name: str, address: str) -> tuple[Path, Path]:
        assert self.ca is not None
        cert, key = self.ca.directory / f"{name}.pem", self.ca.directory / f"{name}-key.pem"
        return (cert, key) if cert.exists() else self.ca.issue(name, [address])

    def client(self) -> httpx.Client:
        """An HTTP client that trusts the lab's hosts and etcd members and shows them a certificate."""
        if self.ca is None:
            return httpx.Client(trust_env=False, timeout=10.0)
        context = ssl.create_default_context(cafile=self.ca.cert)
        context.load_cert_chain(*self._certificate("lab-client", "127.0.0.1"))
        return httpx.Client(verify=context, trust_env=False, timeout=10.0)

    def start_host(self, host: Host, cluster: bool = True) -> None:
        if not host.data_dir.exists():
            host.data_dir.mkdir(parents=True)
            (host.data_dir / "images").symlink_to(self.images_dir)
        command = [*_in_netns(host.netns), sys.executable, "-m", "ember", "serve"]
        command += ["--host", "0.0.0.0", "--port", str(HOST_PORT), "--advertise", host.url]
        if cluster:
            command += ["--cluster", self.endpoints, "--name", host.name]
        with host.log_path.open("ab") as log:
            host.process = subprocess.Popen(
                command,
                env=self._host_env(host),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host.killed = False

    def _start_gateway(self) -> None:
        command = [
            sys.executable,
            "-m",
            "ember",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.gateway_port),
        ]
        command += ["--cluster", self.endpoints, "--gateway", "--name", "gw"]
        data_dir = self.scratch / "gateway"
        data_dir.mkdir()
        env = {
            **self.env,
            **self._tls_env("gw", "127.0.0.1"),
            "EMBER_DATA_DIR": str(data_dir),
            "XDG_CONFIG_HOME": str(data_dir / "config"),
        }
        with self.gateway_log.open("ab") as log:
            self.gateway = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def status(self, url: str | None = None) -> dict[str, object]:
        answer = httpx.get(
            f"{url or self.url}/v1/cluster",
            headers={"authorization": f"Bearer {self.api_key}"},
            timeout=10.0,
            trust_env=False,
        )
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]

    def entry(self, sandbox_id: str) -> dict[str, object] | None:
        """A sandbox's catalog entry as etcd holds it (its ``host``, ``state``, ``end_reason``)."""
        key = base64.b64encode(f"/ember/sandboxes/{sandbox_id}".encode()).decode()
        with self.client() as client:
            for member in self.members:
                if member.process is None:
                    continue
                try:
                    body = {"key": key, "serializable": True}
                    answer = client.post(f"{member.client_url}/v3/kv/range", json=body)
                except httpx.HTTPError:
                    continue
                kvs = answer.json().get("kvs") or []
                return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None
        raise RuntimeError("no etcd member of the lab answers")

    def _all_joined(self) -> bool:
        for process, log in [
            (self.gateway, self.gateway_log),
            *((h.process, h.log_path) for h in self.hosts),
        ]:
            if process is None or process.poll() is not None:
                raise RuntimeError(f"a cluster daemon exited; its log:\n{log.read_text()[-4000:]}")
        try:
            hosts = self.status()["hosts"]
        except httpx.HTTPError:
            return False
        up = [h for h in hosts if h["state"] == "up" and h["role"] == "host"]  # type: ignore[attr-defined, index]
        return len(up) == len(self.hosts) and all("base" in h["templates"] for h in up)  # type: ignore[index]

    @staticmethod
    def wait_until(predicate: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(0.2)

    # ------------------------------------------------------------ failures

    def kill_host(self, host: Host) -> None:
        """The host dies: its daemon and everything under it, SIGKILLed at once."""
        assert host.process is not None
        doomed = [host.process.pid, *_descendants(host.process.pid)]
        doomed += [pid for pid, _ in qemu_processes(host.run_dir)]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        host.process.wait()
        host.process = None
        host.killed = True

    def wait_serving(self, host: Host) -> None:
        """Wait until the host's daemon answers /health (or has exited)."""
        assert host.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with self.client() as client:
            while host.process.poll() is None and time.monotonic() < deadline:
                try:
                    if client.get(f"{host.url}/health", timeout=1.0).status_code == 200:
                        return
                except httpx.HTTPError:
                    time.sleep(0.2)

    def kill_daemon(self, host: Host) -> None:
        """Only the host's daemon dies (a crash): its sandboxes' VMs run on, as after any daemon crash."""
        assert host.process is not None
        os.killpg(host.process.pid, signal.SIGKILL)
        host.process.wait()
        host.process = None
        host.killed = True

    # ------------------------------------------------------------ stopping

    def close(self) -> None:
        if self.gateway is not None:
            _stop(self.gateway)
            self.gateway = None
        for host in self.hosts:
            if host.process is not None:
                _stop(host.process)
                host.process = None
        for host in self.hosts:
            if host.killed:
                self._recover(host)
        for member in self.members:
            if member.process is not None:
                _stop(member.process)
                member.process = None
        for name in self._namespaces:
            _ip("netns", "delete", name, check=False)
        for link in reversed(self._links):
            _ip("link", "delete", link, check=False)
        for host in self.hosts:
            shutil.rmtree(host.run_dir, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _recover(self, host: Host) -> None:
        """A killed host's engine started once, alone, to end and clean up what its death left."""
        self.start_host(host, cluster=False)
        assert host.process is not None
        self.wait_serving(host)
        _stop(host.process)
        host.process = None
        host.killed = False

    def leftovers(self) -> list[str]:
        """What of this lab still exists: nothing once ``close`` has returned."""
        found = []
        namespaces = _ip("netns", "list").stdout
        found += [f"netns {n}" for n in self._namespaces if n in namespaces]
        found += [
            f"link {link}" for link in self._links if _ip("link", "show", link, check=False).returncode == 0
        ]
        for host in self.hosts:
            found += [f"QEMU {pid} of {host.name}" for pid, _ in qemu_processes(host.run_dir)]
        markers = [str(self.scratch).encode(), *(m.netns.encode() for m in self.members)]
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
                if any(marker in cmdline for marker in markers):
                    found.append(f"process {entry.name}: {cmdline[:80]!r}")
        if self.scratch.exists():
            found.append(f"directory {self.scratch}")
        return found

    def log_tails(self, size_bytes: int = 3000) -> str:
        parts = []
        for name, path in [("gateway", self.gateway_log), *((h.name, h.log_path) for h in self.hosts)]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n{path.read_bytes()[-size_bytes:].decode('utf-8', 'replace')}")
        return "\n".join(parts)


def _in_netns(name: str) -> list[str]:
    """A command prefix that runs in network namespace ``name`` and nothing else: ``ip netns exec``
    also mounts a sysfs of its own, which hides the cgroup hierarchies a host's jail needs."""
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def claim_subnet(device: str, network: str, start: int) -> int:
    """A ``<network>.<n>.0/24`` (network: two octets) that nothing on the host routes, claimed by
    adding its route to ``device``. The kernel refuses a second route to the same prefix, so two labs
    starting at once never share one."""
    for _ in range(256):
        routed = [
            ipaddress.ip_network(route["dst"], strict=False)
            for route in json.loads(_ip("-json", "route", "show", "table", "all").stdout)
            if route["dst"] != "default"
        ]
        candidates = (ipaddress.ip_network(f"{network}.{(start + i) % 256}.0/24") for i in range(256))
        free = next((net for net in candidates if not any(net.overlaps(other) for other in routed)), None)
        if free is None:
            break
        if _ip("route", "add", str(free), "dev", device, check=False).returncode == 0:
            return int(str(free.network_address).split(".")[2])
    raise RuntimeError(f"no free {network}.<n>.0/24 subnet on this host for a test network")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit():
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
