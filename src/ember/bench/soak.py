"""The soak: the same full cycle many times over, to show that nothing accumulates.

Each cycle creates a sandbox, runs code and a command in it, writes and reads a
file, snapshots it (every other cycle, restoring the snapshot and deleting it)
or forks it, and ends everything it made. Every ``every`` cycles, and once after
the last, a sample is taken: the lab's census (QEMU processes, run directories,
network namespaces, cgroups, uid claims, disk layers, snapshot directories, the
daemon's open files, loggers, asyncio tasks and objects of Ember's classes),
whose drift from the first sample must be nothing, and the daemon's memory
report. Memory is a curve, not a count: a leak grows it at every sample, a
warm-up (a worker thread's first allocations, a cache filling to its bound)
only until it is done, so the report keeps every sample.
"""

from __future__ import annotations

import shutil
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.bench.lab import Lab
from ember.client import Sandbox
from ember.server import memory_report

#: Cycles run before the first sample: what a first cycle leaves for the next ones is a
#: cache (one spare image per template, the SDK's connections), not a leak.
WARM_UP = 2
#: The longest a sample waits for the warm pool to be full again (then it is taken anyway).
AT_REST_TIMEOUT_S = 120.0
#: The first sample's allocation trace, kept when the daemon traces (``EMBER_MEMORY_TRACE``).
FIRST_TRACE = "first.trace"


@dataclass
class Sample:
    """The census and the daemon's memory report after ``cycle`` cycles, ``seconds`` in."""

    cycle: int
    seconds: float
    counts: dict[str, float]
    memory: dict[str, Any]

    @property
    def rss_mib(self) -> float:
        return self.memory["rss_kib"] / 1024


@dataclass
class Soak:
    cycles: int
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def drift(self) -> dict[str, float]:
        """Last census minus first, per thing counted."""
        first, last = self.samples[0].counts, self.samples[-1].counts
        return {name: last[name] - first[name] for name in first}

    def rss_growth_mib(self, since_cycle: int = 0) -> float:
        """The daemon's RSS at the last sample minus at the first one from ``since_cycle`` on."""
        since = next(s for s in self.samples if s.cycle >= since_cycle)
        return self.samples[-1].rss_mib - since.rss_mib

    def grown_types(self, top: int = 5, prefix: str = "") -> list[tuple[str, int]]:
        """The classes (named from ``prefix``) of which the daemon held most more objects at the
        end than at the start."""
        first, last = self.samples[0].memory["types"], self.samples[-1].memory["types"]
        grown = ((name, n - first.get(name, 0)) for name, n in last.items() if name.startswith(prefix))
        return sorted((g for g in grown if g[1] > 0), key=lambda g: -g[1])[:top]


def cycle(lab: Lab, number: int) -> None:
    """One create -> run_code -> command -> file -> snapshot or fork -> destroy."""
    with lab.sandbox() as sandbox:
        assert sandbox.run_code(f"n = {number}; n + n").results[0].text == str(number * 2)
        assert sandbox.commands.run("echo soak").stdout == "soak\n"
        sandbox.files.write("/app/soak.txt", f"cycle {number}")
        assert sandbox.files.read("/app/soak.txt") == f"cycle {number}".encode()
        if number % 2:
            for fork in sandbox.fork(1):
                with fork:
                    assert fork.run_code("n").results[0].text == str(number)
        else:
            snapshot = sandbox.snapshot()
            with lab.sandbox(snapshot=snapshot.id) as restored:
                assert restored.run_code("n").results[0].text == str(number)
            Sandbox.delete_snapshot(snapshot.id, base_url=lab.url, api_key=lab.api_key)


def soak(lab: Lab, cycles: int, every: int = 100, progress: Callable[[str], None] = print) -> Soak:
    """Run ``cycles`` cycles against the lab's (running) daemon, a sample every ``every``."""
    result = Soak(cycles)
    for number in range(-WARM_UP + 1, 1):  # caches fill: a spare image, pooled connections
        cycle(lab, number)
    started = time.perf_counter()
    _sample(lab, result, 0, started)
    trace = lab.memory_dir / memory_report.TRACE
    if trace.exists():
        shutil.move(trace, lab.memory_dir / FIRST_TRACE)
    for number in range(1, cycles + 1):
        cycle(lab, number)
        if number % every == 0 or number == cycles:
            sample = _sample(lab, result, number, started)
            progress(f"{number}/{cycles} cycles, {sample.seconds:.0f} s, daemon RSS {sample.rss_mib:.1f} MiB")
    result.seconds = time.perf_counter() - started
    return result


def _sample(lab: Lab, result: Soak, number: int, started: float) -> Sample:
    """The census and memory report, taken at rest: once the warm pool is full again (a
    refill under way holds a sandbox's objects) and a new image's filling has begun."""
    deadline = time.monotonic() + AT_REST_TIMEOUT_S
    time.sleep(3)
    while time.monotonic() < deadline and any(
        pool.ready < pool.target for pool in Sandbox.pool_stats(base_url=lab.url, api_key=lab.api_key)
    ):
        time.sleep(0.5)
    before = lab.memory()
    time.sleep(1)
    memory = _steady(before, lab.memory())
    sample = Sample(number, time.perf_counter() - started, lab.census(memory), memory)
    result.samples.append(sample)
    return sample


def _steady(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """``second``, its counts (tasks, loggers, objects by type) the lower of the two reports:
    what a leak keeps is in both, what a request still in flight holds is in one at most."""
    types = {name: min(count, first["types"].get(name, 0)) for name, count in second["types"].items()}
    counts = {key: min(first[key], second[key]) for key in ("tasks", "loggers") if second[key] is not None}
    return {**second, **counts, "types": types}


def traced_growth(lab: Lab, top: int = 10) -> list[str]:
    """The allocation sites that grew most from the first sample to the last, when the
    daemon traces (``EMBER_MEMORY_TRACE``): the place a leak allocates."""
    first, last = lab.memory_dir / FIRST_TRACE, lab.memory_dir / memory_report.TRACE
    if not (first.exists() and last.exists()):
        return []
    ignored = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before = tracemalloc.Snapshot.load(str(first)).filter_traces(ignored)
    after = tracemalloc.Snapshot.load(str(last)).filter_traces(ignored)
    return [str(change) for change in after.compare_to(before, "lineno")[:top]]
