"""``ember bench --cluster``: what the cluster costs and how it behaves, on a lab cluster of its own.

Against ``ember.bench.cluster_lab`` (three etcd members, three hosts in network
namespaces, a gateway), through the SDK:

- a create and a ``run_code`` through the gateway against the same on the host
  itself (both placed on that host: the difference is the proxy's hop);
- 16 creates at once through the gateway: each one's latency, the whole batch,
  and how placement spread them;
- a host killed with SIGKILL: the time until the catalog reports its sandboxes
  lost (the lease's end plus the grace period plus the reporter's tick).

Creates restore template ``base`` (no warm pool: the pool's refills would run
beside the timings on this 2-core machine).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable

import httpx

from ember.bench.cluster_lab import ClusterLab
from ember.bench.stats import Row
from ember.bench.suite import Plan, Report
from ember.client import Sandbox
from ember.settings import Settings

CONCURRENT = 16
LEASE_S = 4
GRACE_S = 5.0


def run(iterations: int, progress: Callable[[str], None]) -> Report:
    plan = Plan(fast=iterations, creates=iterations, forks=0, boots=0, transfer_mb=0, fork_counts=(),
                idle_counts=(), clients=CONCURRENT)  # fmt: skip
    report = Report(acceleration="", plan=plan)
    with ClusterLab(Settings.from_env().images_dir, lease_s=LEASE_S, grace_s=GRACE_S) as lab:
        with lab.client() as client:
            report.acceleration = client.get(f"{lab.hosts[0].url}/health").json()["acceleration"]
        host = lab.hosts[0]
        progress(f"create and run_code, through the gateway and on {host.name} itself, in turns")
        direct = (Row("create on the host"), Row("run_code on the host"), Row("GET sandbox on the host"))
        proxied = (
            Row("create through the gateway", baseline="create on the host"),
            Row("run_code through the gateway", baseline="run_code on the host"),
            Row("GET sandbox through the gateway", baseline="GET sandbox on the host"),
        )
        for _ in range(iterations):  # in turns, so that a drift of the machine's load hits both alike
            _hop(lab, host.url, host.name, *direct)
            _hop(lab, lab.url, host.name, *proxied)
        report.rows += [*direct, *proxied]
        progress(f"{CONCURRENT} creates at once through the gateway")
        report.rows += _burst(lab)
        progress("killing a host and waiting for its sandboxes to be reported lost")
        report.rows.append(_death(lab))
    return report


def _hop(lab: ClusterLab, url: str, host: str, create: Row, call: Row, read: Row) -> None:
    """One create placed on ``host`` through ``url``, five run_code round trips (after a first) and five
    reads of the sandbox (the hop alone, nearly: no guest involved), a delete."""
    with lab.client() as client:
        client.base_url, client.timeout = httpx.URL(url), httpx.Timeout(120)
        client.headers.update({"authorization": f"Bearer {lab.api_key}", "ember-host": host})
        started = time.perf_counter()
        answer = client.post("/v1/sandboxes", json={"timeout": 600})
        create.samples.append(time.perf_counter() - started)
        if answer.is_error:
            raise RuntimeError(f"a create through {url} failed: {answer.text}")
        code = f"/v1/sandboxes/{answer.json()['id']}/code"
        client.post(code, json={"code": "1"}).raise_for_status()  # a restored guest's first answer is slower
        for _ in range(5):
            started = time.perf_counter()
            client.post(code, json={"code": "1"}).raise_for_status()
            call.samples.append(time.perf_counter() - started)
        for _ in range(5):
            started = time.perf_counter()
            client.get(f"/v1/sandboxes/{answer.json()['id']}").raise_for_status()
            read.samples.append(time.perf_counter() - started)
        client.delete(f"/v1/sandboxes/{answer.json()['id']}").raise_for_status()


def _burst(lab: ClusterLab) -> list[Row]:
    each = Row(f"create, {CONCURRENT} at once")

    def make(_: int) -> Sandbox:
        started = time.perf_counter()
        sandbox = Sandbox(timeout=600, base_url=lab.url, api_key=lab.api_key)
        each.samples.append(time.perf_counter() - started)
        return sandbox

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        made = list(pool.map(make, range(CONCURRENT)))
    batch = Row(f"all {CONCURRENT} creates", [time.perf_counter() - started])
    spread = Counter(str((lab.entry(s.id) or {}).get("host")) for s in made)
    batch.note = "placed: " + ", ".join(f"{name} {count}" for name, count in sorted(spread.items()))
    for sandbox in made:
        sandbox.kill()
    return [each, batch]


def _death(lab: ClusterLab) -> Row:
    doomed = lab.hosts[-1]
    victims = []
    while len(victims) < 2:
        answer = httpx.post(
            f"{lab.url}/v1/sandboxes",
            json={"timeout": 600},
            headers={"authorization": f"Bearer {lab.api_key}", "ember-host": doomed.name},
            timeout=120,
            trust_env=False,
        )
        answer.raise_for_status()
        victims.append(answer.json()["id"])
    lab.kill_host(doomed)
    died = time.perf_counter()
    lab.wait_until(lambda: all((lab.entry(v) or {}).get("state") == "lost" for v in victims), 120, "lost")
    row = Row("host death -> its sandboxes lost", [time.perf_counter() - died])
    row.note = f"lease {LEASE_S} s + grace {GRACE_S:g} s + the reporter's 1 s tick at most"
    return row
