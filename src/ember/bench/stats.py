"""Timings into percentiles, and each one set against its baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One line of the report: an operation's percentiles (seconds), or a single value."""

    name: str
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    baseline: str | None = None
    note: str = ""

    def percentile(self, q: int) -> float | None:
        if not self.samples:
            return None
        if len(self.samples) == 1:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=100, method="inclusive")[q - 1]

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            n=len(self.samples), p50=self.percentile(50), p95=self.percentile(95), p99=self.percentile(99)
        )
        return data


def timed(action: Callable[[], object], iterations: int, row: Row) -> Row:
    """Run ``action`` ``iterations`` times, adding each duration to ``row``."""
    for _ in range(iterations):
        started = time.perf_counter()
        action()
        row.samples.append(time.perf_counter() - started)
    return row
