"""The benchmark suite: every operation users time, through the SDK, against a local daemon.

Each latency is kept with the name of its floor (``baselines``), measured in the
same run, so the report can print the ratio. Sandboxes come from template
``base`` (and the warm pool) when the daemon has it; the rows that need it say
so when it is missing. Every sandbox the suite makes is closed before it ends.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx

from ember.bench import baselines, host, memory
from ember.bench.forkbound import ForkRun, fork_once
from ember.bench.stats import Row, timed
from ember.client import Sandbox
from ember.client._config import resolve_config
from ember.errors import EmberError
from ember.protocol.framing import PROBE_PORT_NAME

Progress = Callable[[str], None]
_CLI_NOTE = "the floor: 200 ms over its baseline (the cell's own time)"
_TO_GUEST = "agent channel ceiling, host to guest (raw virtio-serial)"
_FROM_GUEST = "agent channel ceiling, guest to host (raw virtio-serial)"
_FILES_NOTE = "files go on the transfer disk, not the channel: the ratio may pass 1"


@dataclass(frozen=True)
class Plan:
    """How much of everything: iterations per kind of operation and the sizes."""

    fast: int  # round trips (run_code, commands, baselines)
    creates: int  # creates, restores, whole cycles
    forks: int
    boots: int
    transfer_mb: int
    fork_counts: tuple[int, ...]
    idle_counts: tuple[int, ...]
    clients: int
    #: Try to hold this many idle sandboxes at once (0: skip): how far the host goes before create fails.
    density_max: int = 0


QUICK = Plan(
    fast=5, creates=2, forks=1, boots=1, transfer_mb=4, fork_counts=(1, 2), idle_counts=(1, 2), clients=2
)
FULL = Plan(
    fast=100, creates=20, forks=6, boots=3, transfer_mb=100, fork_counts=(1, 4, 8),
    idle_counts=(1, 10, 50, 100), clients=16,
)  # fmt: skip


@dataclass
class Report:
    acceleration: str
    plan: Plan
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def as_dict(self) -> dict[str, object]:
        return {
            "acceleration": self.acceleration,
            "plan": self.plan.__dict__,
            "rows": [r.as_dict() for r in self.rows],
            "notes": self.notes,
        }


class Suite:
    def __init__(
        self, plan: Plan, progress: Progress, base_url: str | None = None, api_key: str | None = None
    ):
        # The first SDK call starts a local daemon when none is configured or running.
        names = {t.name for t in Sandbox.list_templates(base_url=base_url, api_key=api_key)}
        config = resolve_config(api_key, base_url, 600)
        self.plan = plan
        self.say = progress
        self.url, self.key = config.base_url, config.api_key
        self.http = httpx.Client(base_url=self.url, timeout=60)
        health = self.http.get("/health").json()
        self.report = Report(acceleration=health["acceleration"], plan=plan)
        self.has_base = "base" in names
        self.pooled = any(p.template == "base" and p.target > 0 for p in self._pools())

    def run(self) -> Report:
        try:
            self._baselines()
            with self._sandbox() as source:
                self._round_trips(source)
                self._noisy_neighbour(source)
                self._restore_and_fork(source)
                self._channel_ceiling(source)
                self._transfer(source)
                self._fork_after_transfer(source)
            self._creates()
            self._density()
            self._concurrency()
            if self.plan.density_max:
                self._capacity(self.plan.density_max)
        finally:
            self.http.close()
        return self.report

    # ------------------------------------------------------------ helpers

    def _sandbox(self, **kwargs: object) -> Sandbox:
        kwargs.setdefault("timeout", 3600)
        return Sandbox(**kwargs, base_url=self.url, api_key=self.key)  # type: ignore[arg-type]

    def _pools(self) -> list:
        return Sandbox.pool_stats(base_url=self.url, api_key=self.key)

    def _wait_for_pool(self, timeout_s: float = 120, full: bool = False) -> None:
        """Untimed: let the pool refill, so that each create measures a hit, not a miss
        (``full``: so that no refill runs beside what is measured next)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.template == "base" and p.ready >= (p.target if full else 1) for p in self._pools()):
                return
            time.sleep(0.05)

    def _cli(self, *args: str) -> None:
        env = {**os.environ, "EMBER_URL": self.url, "EMBER_API_KEY": self.key or ""}
        subprocess.run([sys.executable, "-m", "ember", *args], env=env, check=True, capture_output=True)

    def _add(self, row: Row) -> Row:
        self.report.rows.append(row)
        p50 = row.percentile(50)
        self.say(f"{row.name}: p50 {p50:.4f} {row.unit}" if p50 is not None else f"{row.name}: {row.note}")
        return row

    # ------------------------------------------------------------ the measurements

    def _baselines(self) -> None:
        n = self.plan.fast
        self._add(timed(lambda: baselines.http_noop(self.http), n, Row(baselines.HTTP)))
        repl = baselines.LocalRepl()
        try:
            self._add(timed(lambda: repl.run("1+1"), n, Row(baselines.REPL)))
        finally:
            repl.close()
        self._add(timed(baselines.host_true, n, Row(baselines.TRUE)))

    def _round_trips(self, sandbox: Sandbox) -> None:
        n, repl, http, true = self.plan.fast, baselines.REPL, baselines.HTTP, baselines.TRUE
        self._add(timed(lambda: sandbox.run_code("1+1"), n, Row("run_code 1+1", baseline=repl)))
        self._add(timed(lambda: sandbox.run_code("print('hi')"), n, Row("run_code print", baseline=repl)))
        self._add(timed(lambda: sandbox.commands.run("true"), n, Row("command true", baseline=true)))
        self._add(timed(lambda: sandbox.info(), n, Row("GET sandbox info", baseline=http)))
        # The CLI as a user runs it: a new interpreter each time, the command's imports, one cell.
        cli = Row("ember execute -c 1 --sandbox ID", baseline="run_code 1+1", note=_CLI_NOTE)
        self._add(timed(lambda: self._cli("execute", "-c", "1", "--sandbox", sandbox.id), min(n, 20), cli))

    def _noisy_neighbour(self, quiet: Sandbox) -> None:
        """``quiet``'s round trip while another sandbox spins every vCPU and fills its
        memory, and how much host CPU that one gets (its cgroup's quota: its vCPUs)."""
        with self._sandbox() as noisy:
            vcpus = noisy.info().vcpus
            hog = (
                "import os, time\n"
                f"for _ in range({vcpus} - 1):\n"
                "    if os.fork() == 0:\n"
                "        while True: pass\n"
                "ballast = bytearray(384 << 20)\n"
                "for i in range(0, len(ballast), 4096): ballast[i] = 1\n"
                "while True: pass\n"
            )
            noisy.files.write("/tmp/hog.py", hog.encode())
            noisy.commands.run("python3 /tmp/hog.py", background=True)
            time.sleep(2)  # its memory filled, every vCPU busy
            before = host.qemu_cpu_s(noisy.id), time.perf_counter()
            row = Row("run_code 1+1 beside a noisy neighbour", baseline="run_code 1+1")
            self._add(timed(lambda: quiet.run_code("1+1"), self.plan.fast, row))
            used, wall = host.qemu_cpu_s(noisy.id), time.perf_counter()
            if used is None or before[0] is None:
                self._add(Row("noisy neighbour's CPU", note="n/a: the daemon runs on another host"))
            else:
                cores = (used - before[0]) / (wall - before[1])
                note = f"its quota: {vcpus} vCPUs' worth, of {os.cpu_count()} host CPUs"
                self._add(Row("noisy neighbour's CPU", [cores], unit="CPUs", note=note))

    def _channel_ceiling(self, sandbox: Sandbox) -> None:
        """The agent channel's own ceiling: bytes through a virtio-serial port of the same
        device (the VM's probe port), no framing, a guest ``dd`` at the other end. Timed on
        the host, from the first byte to the last (one socket buffer early, host to guest)."""
        size = self.plan.transfer_mb
        path = host.probe_socket(sandbox.id)
        if path is None:
            for way in (_TO_GUEST, _FROM_GUEST):
                self._add(Row(way, note="n/a: the daemon runs on another host"))
            return
        found = sandbox.commands.run(f"grep -lx {PROBE_PORT_NAME} /sys/class/virtio-ports/*/name")
        port = "/dev/" + found.stdout.strip().split("/")[-2]
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
            time.sleep(0.2)  # the guest learns that the host is there (else its reads end at once)
            reader = sandbox.commands.run(
                f"dd if={port} of=/dev/null bs=1M count={size} iflag=fullblock", background=True
            )
            chunk = bytes(1 << 20)
            started = time.perf_counter()
            for _ in range(size):
                probe.sendall(chunk)
            self._add(Row(_TO_GUEST, [size / (time.perf_counter() - started)], unit="MB/s"))
            reader.wait()
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
            time.sleep(0.2)
            writer = threading.Thread(
                target=sandbox.commands.run, args=(f"dd if=/dev/zero of={port} bs=1M count={size}",)
            )
            writer.start()
            received, started = 0, None
            while received < size << 20 and (data := probe.recv(1 << 20)):
                started = started or time.perf_counter()
                received += len(data)
            seconds = time.perf_counter() - (started or 0)
            writer.join()
        self._add(Row(_FROM_GUEST, [size / seconds], unit="MB/s"))

    def _transfer(self, sandbox: Sandbox) -> None:
        size = self.plan.transfer_mb
        data = os.urandom(size << 20)
        started = time.perf_counter()
        sandbox.files.write("/app/bench.bin", data)
        up = time.perf_counter() - started
        started = time.perf_counter()
        back = sandbox.files.read("/app/bench.bin")
        down = time.perf_counter() - started
        if back != data:
            raise EmberError("the downloaded file differs from the uploaded one")
        self._add(Row(f"upload {size} MB", [size / up], unit="MB/s", baseline=_TO_GUEST, note=_FILES_NOTE))
        self._add(Row(f"download {size} MB", [size / down], unit="MB/s", baseline=_FROM_GUEST))
        sandbox.files.remove("/app/bench.bin")

    def _restore_and_fork(self, source: Sandbox) -> None:
        """Snapshot, restore and fork a sandbox in the state of an agent's session: a
        REPL with variables, commands run, a few MB of guest memory written."""
        source.run_code("state = list(range(1000))")
        snapshot = source.snapshot()
        try:
            restore = Row("create from a snapshot (restore)")
            for _ in range(self.plan.creates):
                started = time.perf_counter()
                restored = self._sandbox(snapshot=snapshot.id)
                restore.samples.append(time.perf_counter() - started)
                restored.close()
            self._add(restore)
        finally:
            Sandbox.delete_snapshot(snapshot.id, base_url=self.url, api_key=self.key)
        counts = self.plan.fork_counts
        rows = {n: Row(f"fork({n})", baseline=_bound_name(n) if n > 1 else None) for n in counts}
        runs: dict[int, list[ForkRun]] = {n: [] for n in counts}
        # Rounds of every count in turn: each fork leaves its source's disk chain a layer
        # deeper (its children open one more), so that C (from fork(1)) and each fork(n)
        # are measured at the same depths.
        for _ in range(self.plan.forks):
            for count in counts:
                runs[count].append(self._fork(source, count, rows[count]))
        for row in rows.values():
            self._add(row)
        self._fork_bounds(runs)
        self._add(
            self._source_during_fork(
                source, Row("source run_code during a fork (worst)", baseline="run_code 1+1")
            )
        )
        self._fork_density(source)

    def _fork_after_transfer(self, source: Sandbox) -> None:
        """The same fork once the transfers went through the guest: a snapshot reads
        (in the pause) and writes every page the guest wrote since its restore."""
        name = f"after {self.plan.transfer_mb} MB each way"
        row = Row(f"fork(1) {name}", baseline="fork(1)")
        for _ in range(self.plan.forks):
            self._fork(source, 1, row)
        self._add(row)
        self._add(
            self._source_during_fork(
                source, Row(f"source run_code during a fork {name}", baseline="run_code 1+1")
            )
        )

    def _fork(self, source: Sandbox, count: int, row: Row) -> ForkRun:
        """One fork(count): its time into ``row``, and how it went; its children are killed."""
        self._wait_for_pool(full=True)
        run, children = fork_once(self.http, self.key, source.id, count)
        row.samples.append(run.wall_s)
        for child in children:
            Sandbox.connect(child, base_url=self.url, api_key=self.key).kill()
        return run

    def _fork_bounds(self, runs: dict[int, list[ForkRun]]) -> None:
        """T, C and each fork(n)'s bound ``T + n·C / cores`` (the ratio column of fork(n))."""
        if 1 not in runs:
            return
        single = runs[1]
        if any(r.child_cpu_s is None for rs in runs.values() for r in rs):
            self._add(Row("fork bounds", note="n/a: the daemon runs on another host"))
            return
        self._add(Row("T: a fork's snapshot, before any child starts", [r.snapshot_s for r in single]))
        self._add(Row("C: one fork child's CPU (its QEMU and the daemon)", [r.child_cpu_s for r in single]))
        cores = os.cpu_count() or 1
        for count, measured in runs.items():
            if count > 1:
                others = statistics.median(r.others_cores for r in measured)
                left = ForkRun.bound_s(measured, single, max(cores - others, 0.1))
                note = (
                    f"meanwhile the host's other processes used {others:.1f} of its {cores} cores; "
                    f"with the CPU they left: {left * 1000:.0f} ms"
                )
                bound = ForkRun.bound_s(measured, single, cores)
                self._add(Row(_bound_name(count, cores), [bound], note=note))

    @staticmethod
    def _source_during_fork(source: Sandbox, row: Row) -> Row:
        """The longest the source takes to answer while it is forked (its pause)."""
        with ThreadPoolExecutor(1) as pool:
            forking = pool.submit(source.fork, 1)
            worst = 0.0
            while not forking.done():
                started = time.perf_counter()
                source.run_code("1")
                worst = max(worst, time.perf_counter() - started)
            for fork in forking.result():
                fork.close()
        row.samples.append(worst)
        return row

    def _creates(self) -> None:
        http = baselines.HTTP
        if self.has_base and self.pooled:
            row = Row("create from the warm pool", baseline=http)
            cycle = Row("create -> run_code -> close (pool)", baseline=http)
            for _ in range(self.plan.creates):
                self._wait_for_pool()
                started = time.perf_counter()
                sandbox = self._sandbox()
                row.samples.append(time.perf_counter() - started)
                sandbox.close()
                self._wait_for_pool()
                started = time.perf_counter()
                with self._sandbox() as sandbox:
                    sandbox.run_code("1+1")
                cycle.samples.append(time.perf_counter() - started)
            self._add(row)
            self._add(cycle)
            cli = Row("ember execute -c 1 (a new sandbox)", baseline=cycle.name, note=_CLI_NOTE)
            for _ in range(self.plan.creates):
                self._wait_for_pool()
                timed(lambda: self._cli("execute", "-c", "1"), 1, cli)
            self._add(cli)
        else:
            self._add(Row("create from the warm pool", note="skipped: the daemon has no template base pool"))
        boot = Row("create with a cold boot")
        for _ in range(self.plan.boots):
            started = time.perf_counter()
            sandbox = self._sandbox(memory_mb=448)  # not base's shape: a boot
            boot.samples.append(time.perf_counter() - started)
            sandbox.close()
        self._add(boot)

    def _density(self) -> None:
        """Idle sandboxes as users get them: from the warm pool when the daemon pools
        ``base`` (each create waits for a ready one), restored on the spot otherwise."""
        for count in self.plan.idle_counts:
            before = self._pool_use()
            with ExitStack() as stack:
                sandboxes = []
                for _ in range(count):
                    if self.pooled:
                        self._wait_for_pool()
                    sandboxes.append(stack.enter_context(self._sandbox()))
                hits, misses = (now - then for now, then in zip(self._pool_use(), before, strict=True))
                self._idle_pss(
                    f"PSS per idle sandbox ({count})",
                    sandboxes,
                    f"{hits} from the warm pool, {misses} restored on the spot",
                )

    def _pool_use(self) -> tuple[int, int]:
        """Hits and misses of template base's pool so far."""
        pool = next((p for p in self._pools() if p.template == "base"), None)
        return (pool.hits, pool.misses) if pool is not None else (0, 0)

    def _fork_density(self, source: Sandbox) -> None:
        count = max(self.plan.fork_counts)
        with ExitStack() as stack:
            forks = [stack.enter_context(fork) for fork in source.fork(count)]
            self._idle_pss(f"PSS per idle fork ({count})", forks)

    def _idle_pss(self, name: str, sandboxes: list[Sandbox], note: str = "") -> None:
        """PSS per sandbox of ``sandboxes`` after 2 s idle (and, when the host's KSM runs, two
        of its scans), their total, and what the pages hold."""
        time.sleep(2)
        merged = host.ksm_settled()
        if merged is not None:
            note = "; ".join(
                filter(None, (note, f"KSM on: measured after two of its scans ({merged:.0f} s)"))
            )
        processes = [host.qemu_process(s.id) for s in sandboxes]
        pss = [host.pss_mib(p) for p in processes]
        if None in pss:
            self._add(Row(name, note="n/a: the daemon runs on another host"))
            return
        total = sum(p for p in pss if p is not None)
        note = f"total {total:.0f} MiB" + (f"; {note}" if note else "")
        self._add(Row(name, [total / len(sandboxes)], unit="MiB", note=note))
        split = memory.breakdown(int(p.name) for p in processes if p is not None)
        if split is None:
            self._add(Row(f"{name}: by category", note="n/a: reading page frames needs root"))
            return
        for category, mib in split.items():
            self._add(Row(f"{name}: {category}", [mib], unit="MiB"))

    def _capacity(self, limit: int) -> None:
        """Idle sandboxes held at once until a create fails (cleanly, with an error code) or ``limit``."""
        held = 0
        outcome = f"stopped at the limit of {limit}"
        with ExitStack() as stack:
            started = time.perf_counter()
            while held < limit:
                try:
                    stack.enter_context(self._sandbox())
                except EmberError as exc:
                    outcome = f"create {held + 1} failed: {exc.code}"
                    break
                held += 1
                if held % 10 == 0:
                    self.say(f"holding {held} idle sandboxes")
            seconds = time.perf_counter() - started
        self._add(
            Row(
                "idle sandboxes held at once",
                [float(held)],
                unit="sandboxes",
                note=f"{outcome}; {seconds:.0f} s",
            )
        )

    def _concurrency(self) -> None:
        clients = self.plan.clients

        def cycle(_: int) -> float:
            started = time.perf_counter()
            with self._sandbox(timeout=600) as sandbox:
                sandbox.run_code("1+1")
            return time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            durations = list(pool.map(cycle, range(clients)))
        wall = time.perf_counter() - started
        self._add(Row(f"{clients} concurrent create -> run_code -> close", durations))
        self._add(Row(f"throughput with {clients} clients", [clients / wall], unit="sandboxes/s"))


def _bound_name(count: int, cores: int | None = None) -> str:
    return f"fork({count}) bound: T + {count}·C / {cores or os.cpu_count() or 1} cores"
