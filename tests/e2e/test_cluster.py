"""A real cluster: three etcd members, three Ember hosts (each in its own network namespace, with its own
data and run directories) and a gateway, driven through the SDK, the CLI and E2B's SDK at one endpoint.
TLS between all of them (a CA of the lab's own): etcd's members and clients check certificates both
ways, hosts serve HTTPS and check each other's.

The tests run in order on one lab (``ember.bench.cluster_lab``), each leaving the cluster as the next
expects: sandboxes placed, reached through every host, a snapshot copied, then failures one after the
other: a host killed with SIGKILL, an etcd member killed, etcd's quorum lost and given back.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from ember import errors
from ember.bench.cluster_lab import ClusterLab, Host
from ember.client import Keys, Sandbox
from ember.images import ensure_guest_images
from ember.settings import Settings
from leaks import jail_leftovers, qemu_pids_under, sandbox_networks_of

pytestmark = pytest.mark.timeout(900)
SANDBOXES = 12
#: The host killed later: the snapshot test takes its snapshot there, so that its copy must outlive it.
DOOMED = 2


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[ClusterLab]:
    settings = Settings.from_env()
    ensure_guest_images(settings)
    running = ClusterLab(settings.images_dir, lease_s=4, grace_s=5.0)
    try:
        running.start()
        assert running.ca is not None and all(h.url.startswith("https://") for h in running.hosts)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SSL_CERT_FILE", str(running.ca.cert))  # the SDK trusts the hosts' certificates
            yield running
    finally:
        if request.session.testsfailed:
            print(running.log_tails(), file=sys.stderr)
        running.close()
    left = running.leftovers()
    for host in running.hosts:
        left += [f"QEMU {pid}" for pid in qemu_pids_under(host.run_dir)]
        left += sandbox_networks_of(host.data_dir) + jail_leftovers(host.data_dir)
    assert not left, f"the cluster lab left: {left}"


@pytest.fixture(scope="module")
def placed(lab: ClusterLab) -> list[Sandbox]:
    """Twelve sandboxes made through the gateway (four at a time), killed at the end of the module."""

    def make(_: int) -> Sandbox:
        return Sandbox(timeout=1200, base_url=lab.url, api_key=lab.api_key)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        made = list(pool.map(make, range(SANDBOXES)))
    yield made
    for sandbox in made:
        try:
            sandbox.kill()
        except errors.EmberError:
            pass  # lost with its host: nothing to kill


def cli(lab: ClusterLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMBER_URL": lab.url, "EMBER_API_KEY": lab.api_key}
    return subprocess.run(
        [sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True, timeout=120
    )


def on(lab: ClusterLab, sandboxes: list[Sandbox], host: Host) -> list[Sandbox]:
    return [s for s in sandboxes if (lab.entry(s.id) or {}).get("host") == host.name]


def test_placement_spreads_sandboxes_over_the_hosts(lab: ClusterLab, placed: list[Sandbox]) -> None:
    spread = Counter(lab.entry(s.id)["host"] for s in placed)  # type: ignore[index]
    assert sorted(spread) == ["h1", "h2", "h3"], spread
    assert min(spread.values()) >= 2, spread
    listed = cli(lab, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {s.id for s in placed} <= {item["id"] for item in json.loads(listed.stdout)}
    status = cli(lab, "cluster", "status")
    assert status.returncode == 0, status.stderr
    for host in lab.hosts:
        row = next(line.split() for line in status.stdout.splitlines() if line.split()[:1] == [host.name])
        assert row[1:3] == ["host", "up"] and row[5] == str(spread[host.name]), (
            status.stdout
        )  # LEASE is "2s left"


def test_calls_reach_sandboxes_through_any_host(lab: ClusterLab, placed: list[Sandbox]) -> None:
    one_per_host = [on(lab, placed, host)[0] for host in lab.hosts]
    for index, sandbox in enumerate(one_per_host):
        sandbox.run_code(f"marker = {index}")
    for url in [lab.url, *(host.url for host in lab.hosts)]:
        for index, sandbox in enumerate(one_per_host):
            there = Sandbox.connect(sandbox.id, base_url=url, api_key=lab.api_key)
            assert there.run_code("marker").results[0].text == str(index)
            streamed: list[str] = []
            result = there.commands.run(
                "for i in 1 2 3; do echo line$i; sleep 0.1; done", on_stdout=streamed.append
            )
            assert result.exit_code == 0 and "".join(streamed).split() == ["line1", "line2", "line3"]
            payload = os.urandom(3 << 20)
            there.files.write("/tmp/payload.bin", payload)
            assert there.files.read("/tmp/payload.bin") == payload
    seen: list[bytes] = []
    terminal = Sandbox.connect(one_per_host[2].id, base_url=lab.hosts[0].url, api_key=lab.api_key).pty.create(
        on_data=seen.append
    )
    terminal.send("echo pty-$((40 + 2))\n")
    deadline = time.monotonic() + 30
    while b"pty-42" not in b"".join(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"pty-42" in b"".join(seen)
    terminal.close()


def test_e2b_sdk_against_the_cluster_endpoint(lab: ClusterLab, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b_code_interpreter import Sandbox as E2bSandbox

    for name, value in (("E2B_API_URL", lab.url), ("E2B_SANDBOX_URL", lab.url), ("E2B_API_KEY", lab.api_key)):
        monkeypatch.setenv(name, value)
    with E2bSandbox.create(timeout=600) as sandbox:
        sandbox.run_code("x = 41")
        assert sandbox.run_code("x + 1").text == "42"
        assert sandbox.commands.run("echo from-e2b").stdout == "from-e2b\n"
        sandbox.files.write("/tmp/e2b.txt", "hi")
        assert sandbox.files.read("/tmp/e2b.txt") == "hi"
        assert sandbox.sandbox_id in {s.sandbox_id for s in E2bSandbox.list().next_items()}
        assert lab.entry(sandbox.sandbox_id)["host"] in {"h1", "h2", "h3"}  # type: ignore[index]


def test_an_api_key_and_its_quota_work_and_are_revoked_on_every_host(lab: ClusterLab) -> None:
    made = cli(lab, "keys", "create", "cluster-user")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    for url in [lab.url, *(host.url for host in lab.hosts)]:
        assert isinstance(Sandbox.list(base_url=url, api_key=key), list)
    key_id = next(
        k.id for k in Keys(base_url=lab.hosts[1].url, api_key=lab.api_key).list() if k.name == "cluster-user"
    )
    # Its quota, set through the gateway (a host answers it), is the same on every host.
    assert (
        Keys(base_url=lab.url, api_key=lab.api_key).set_quota(key_id, {"sandboxes": 2}).limits["sandboxes"]
        == 2
    )

    def limited(url: str) -> bool:
        return Keys(base_url=url, api_key=key).quota().limits["sandboxes"] == 2

    lab.wait_until(lambda: all(limited(host.url) for host in lab.hosts), 5, "the quota on every host")

    # And counted over the cluster: a sandbox on each of two hosts is the key's limit on the third.
    def create_on(host: Host) -> httpx.Response:
        return httpx.post(
            f"{lab.url}/v1/sandboxes",
            json={"timeout": 600},
            headers={"authorization": f"Bearer {key}", "ember-host": host.name},
            timeout=300,
            trust_env=False,
        )

    made_ids = []
    try:
        for host in lab.hosts[:2]:
            answer = create_on(host)
            assert answer.status_code == 201, answer.text
            made_ids.append(answer.json()["id"])
        refused = create_on(lab.hosts[2])
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "quota_exceeded"
        details = refused.json()["details"]
        assert details == {"quota": "sandboxes", "limit": 2, "used": 2, "requested": 1}
        assert Keys(base_url=lab.hosts[2].url, api_key=key).quota().usage.sandboxes == 2
    finally:
        for sandbox_id in made_ids:
            Sandbox.connect(sandbox_id, base_url=lab.url, api_key=key).close()
    Keys(base_url=lab.hosts[1].url, api_key=lab.api_key).revoke(key_id)
    for url in [lab.url, *(host.url for host in lab.hosts)]:
        with pytest.raises(errors.AuthenticationError):
            Sandbox.list(base_url=url, api_key=key)


def test_snapshot_restores_on_another_host_as_a_checked_copy(lab: ClusterLab, placed: list[Sandbox]) -> None:
    source = on(lab, placed, lab.hosts[DOOMED])[0]
    source.run_code("kept = 'state from h3'")
    snapshot = source.snapshot()
    target = lab.hosts[0]
    answer = httpx.post(
        f"{lab.url}/v1/sandboxes",
        json={"snapshot": snapshot.id, "timeout": 600},
        headers={"authorization": f"Bearer {lab.api_key}", "ember-host": target.name},
        timeout=300,
        trust_env=False,
    )
    assert answer.status_code == 201, answer.text
    restored = Sandbox.connect(answer.json()["id"], base_url=lab.url, api_key=lab.api_key)
    try:
        assert lab.entry(restored.id)["host"] == target.name  # type: ignore[index]
        assert restored.run_code("kept").results[0].text == "'state from h3'"
    finally:
        restored.kill()
    assert f"copied snapshot {snapshot.id} from h3" in target.log_path.read_text()
    assert "checksums match" in target.log_path.read_text()
    pytest.snapshot_id = snapshot.id  # type: ignore[attr-defined]  # restored after h3 dies, below


def test_fork_stays_on_its_source_host(lab: ClusterLab, placed: list[Sandbox]) -> None:
    source = on(lab, placed, lab.hosts[1])[0]
    forks = source.fork(2)
    try:
        assert {lab.entry(f.id)["host"] for f in forks} == {"h2"}  # type: ignore[index]
        assert all(f.run_code("1 + 1").results[0].text == "2" for f in forks)
    finally:
        for fork in forks:
            fork.kill()


def test_a_killed_host_has_its_sandboxes_reported_lost(lab: ClusterLab, placed: list[Sandbox]) -> None:
    doomed = lab.hosts[DOOMED]
    victims = on(lab, placed, doomed)
    assert victims
    lab.kill_host(doomed)
    died = time.monotonic()
    with pytest.raises((errors.HostUnavailableError, errors.SandboxDeadError)):
        Sandbox.connect(victims[0].id, base_url=lab.url, api_key=lab.api_key).run_code("1")
    lab.wait_until(
        lambda: all(lab.entry(v.id)["state"] == "lost" for v in victims), 60, "sandboxes reported lost"
    )  # type: ignore[index]
    print(f"host death to its sandboxes reported lost: {time.monotonic() - died:.1f} s")
    info = Sandbox.connect(victims[0].id, base_url=lab.url, api_key=lab.api_key).info()
    assert info.state == "dead" and "lost with its host h3" in (info.end_reason or "")
    with pytest.raises(errors.SandboxDeadError, match="lost with its host h3"):
        Sandbox.connect(victims[0].id, base_url=lab.url, api_key=lab.api_key).run_code("1")
    listed = cli(lab, "ls", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    dead = {item["id"]: item for item in json.loads(listed.stdout) if item["state"] == "dead"}
    assert {v.id for v in victims} <= set(dead)
    status = lab.status()
    h3 = next(h for h in status["hosts"] if h["name"] == "h3")  # type: ignore[union-attr]
    assert h3["state"] == "down" and h3["lost"] == len(victims)
    new = [Sandbox(timeout=600, base_url=lab.url, api_key=lab.api_key) for _ in range(3)]
    try:
        assert {lab.entry(s.id)["host"] for s in new} <= {"h1", "h2"}  # type: ignore[index]
    finally:
        for sandbox in new:
            sandbox.kill()
    # The snapshot taken on h3 was copied to h1: it restores without h3.
    with Sandbox(snapshot=pytest.snapshot_id, timeout=600, base_url=lab.url, api_key=lab.api_key) as again:  # type: ignore[attr-defined]
        assert again.run_code("kept").results[0].text == "'state from h3'"
    # Deleted through the gateway: the copy goes too, and no host lists it any more.
    Sandbox.delete_snapshot(pytest.snapshot_id, base_url=lab.url, api_key=lab.api_key)  # type: ignore[attr-defined]
    lab.wait_until(
        lambda: (
            pytest.snapshot_id
            not in {s.id for s in Sandbox.list_snapshots(base_url=lab.url, api_key=lab.api_key)}
        ),  # type: ignore[attr-defined]
        30,
        "every copy of the snapshot deleted",
    )


def test_a_host_back_after_its_sandboxes_were_reported_lost_ends_them(
    lab: ClusterLab, placed: list[Sandbox]
) -> None:
    host = lab.hosts[1]
    victims = on(lab, placed, host)
    assert victims
    lab.kill_daemon(host)  # its VMs run on, as after any daemon crash, but it is away too long
    lab.wait_until(lambda: all(lab.entry(v.id)["state"] == "lost" for v in victims), 60, "reported lost")  # type: ignore[index]
    assert qemu_pids_under(host.run_dir), "the daemon's death took its VMs along"
    lab.start_host(host)
    lab.wait_until(
        lambda: not qemu_pids_under(host.run_dir), 60, "the returning host ends what was reported lost"
    )
    lab.wait_serving(host)
    listed = {i.id: i for i in Sandbox.list(all=True, base_url=host.url, api_key=lab.api_key)}
    for victim in victims:
        assert listed[victim.id].state != "running"
        assert "reported lost by the cluster" in (listed[victim.id].end_reason or ""), listed[victim.id]
        assert lab.entry(victim.id)["state"] == "lost"  # type: ignore[index]
    lab.wait_until(lambda: _up(lab, host.name), 30, "the host is back in placement")


def test_the_cluster_goes_on_without_one_etcd_member(lab: ClusterLab, placed: list[Sandbox]) -> None:
    lab.kill_member(lab.members[0])
    with Sandbox(timeout=600, base_url=lab.url, api_key=lab.api_key) as sandbox:
        assert sandbox.run_code("6 * 7").results[0].text == "42"
    members = {m["endpoint"]: m["healthy"] for m in lab.status()["etcd"]["members"]}  # type: ignore[index]
    assert members == {m.client_url: m.process is not None for m in lab.members}


def test_quorum_lost_keeps_sandboxes_and_refuses_creates(lab: ClusterLab, placed: list[Sandbox]) -> None:
    survivors = [s for s in placed if lab.entry(s.id)["state"] == "running"]  # type: ignore[index]
    lab.kill_member(lab.members[1])
    lab.wait_until(lambda: not _writable(lab), 30, "the members see the quorum lost")
    with pytest.raises(errors.ClusterUnavailableError, match="quorum"):
        Sandbox(timeout=600, base_url=lab.url, api_key=lab.api_key)
    refused = cli(lab, "create")
    assert refused.returncode == 1 and "[cluster_unavailable]" in refused.stderr
    refused = cli(lab, "keys", "create", "during-the-outage")
    assert refused.returncode == 1 and "[cluster_unavailable]" in refused.stderr
    time.sleep(lab.lease_s + lab.grace_s + 2)  # longer than a lease and the grace period: nothing may go
    for sandbox in survivors:
        assert (
            Sandbox.connect(sandbox.id, base_url=lab.url, api_key=lab.api_key)
            .run_code("2 + 2")
            .results[0]
            .text
            == "4"
        )
    running = {info.id for info in Sandbox.list(base_url=lab.url, api_key=lab.api_key)}
    assert {s.id for s in survivors} <= running
    for member in lab.members[:2]:
        lab.start_member(member)
    lab.wait_until(lambda: _writable(lab), 60, "etcd has its quorum back")
    with Sandbox(timeout=600, base_url=lab.url, api_key=lab.api_key) as sandbox:
        assert sandbox.run_code("1").results[0].text == "1"
    assert all(lab.entry(s.id)["state"] == "running" for s in survivors)  # type: ignore[index]


def _up(lab: ClusterLab, name: str) -> bool:
    return any(h["name"] == name and h["state"] == "up" for h in lab.status()["hosts"])  # type: ignore[index, union-attr]


def _writable(lab: ClusterLab) -> bool:
    try:
        return bool(lab.status()["etcd"]["writable"])  # type: ignore[index]
    except httpx.HTTPError:
        return False
