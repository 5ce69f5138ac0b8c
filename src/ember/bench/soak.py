"""The soak: the same full cycle many times over, to show that nothing accumulates.

Each cycle creates a sandbox, runs code and a command in it, writes and reads a
file, snapshots it (every other cycle, restoring the snapshot and deleting it)
or forks it, and ends everything it made. Every ``every`` cycles, and once after
the last, the lab's census is taken (QEMU processes, run directories, network
namespaces, cgroups, uid claims, disk layers, snapshot directories, and the
daemon's open files and memory); the report is the first and last census and
their difference, which must be nothing but the daemon's memory settling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.bench.lab import Lab
from ember.client import Sandbox

#: Cycles run before the first census: what a first cycle leaves for the next ones is a
#: cache (one spare image per template, the SDK's connections), not a leak.
WARM_UP = 2


@dataclass
class Soak:
    cycles: int
    seconds: float = 0.0
    censuses: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def drift(self) -> dict[str, float]:
        """Last census minus first, per thing counted."""
        first, last = self.censuses[0][1], self.censuses[-1][1]
        return {name: last[name] - first[name] for name in first}


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
    """Run ``cycles`` cycles against the lab's (running) daemon, census every ``every``."""
    result = Soak(cycles)
    for number in range(-WARM_UP + 1, 1):  # caches fill: a spare image, pooled connections
        cycle(lab, number)
    started = time.perf_counter()
    _settle()
    result.censuses.append((0, lab.census()))
    for number in range(1, cycles + 1):
        cycle(lab, number)
        if number % every == 0 or number == cycles:
            _settle()
            result.censuses.append((number, lab.census()))
            progress(f"{number}/{cycles} cycles, {time.perf_counter() - started:.0f} s")
    result.seconds = time.perf_counter() - started
    return result


def _settle() -> None:
    """Let the daemon finish what follows a close (teardown, collection, pool refill)."""
    time.sleep(3)
