"""``ember bench``: the benchmark suite against the configured (or local) daemon, as a table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ember.bench.stats import Row
from ember.bench.suite import FULL, QUICK, Report, Suite
from ember.cli._output import stderr, stdout

if TYPE_CHECKING:
    from ember.bench.soak import Soak


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="A few iterations of everything (a smoke run).")
    ] = False,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
    capacity: Annotated[
        int, typer.Option("--capacity", help="Also hold up to N idle sandboxes, until a create fails.")
    ] = 0,
    crash: Annotated[
        bool,
        typer.Option(
            "--crash", help="Instead: kill a daemon of its own during each operation, restart, count leaks."
        ),
    ] = False,
    soak: Annotated[
        int, typer.Option("--soak", help="Instead: N full cycles against a daemon of its own; what drifts.")
    ] = 0,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="Instead: a 3-host cluster of its own (etcd, namespaces): proxy, placement."
        ),
    ] = False,
) -> None:
    """Measure Ember's speed and density (p50/p95/p99), each latency next to its floor."""
    if cluster:
        from ember.bench import cluster as cluster_bench

        report = cluster_bench.run(3 if quick else 20, progress=lambda text: stderr.print(f"[dim]{text}[/]"))
        _print(_table(report, "Ember cluster benchmark"))
        if json_file is not None:
            json_file.write_text(json.dumps(report.as_dict(), indent=2))
        return
    if crash:
        _crash_matrix()
        return
    if soak:
        _soak(soak)
        return
    plan = replace(QUICK if quick else FULL, density_max=capacity)
    suite = Suite(plan, progress=lambda text: stderr.print(f"[dim]{text}[/]"))
    report = suite.run()
    # Piped, rich assumes 80 columns and the numbers would not fit.
    out = stdout if stdout.is_terminal else Console(highlight=False, width=132)
    out.print(_table(report))
    if json_file is not None:
        json_file.write_text(json.dumps(report.as_dict(), indent=2))


def _table(report: Report, title: str = "Ember benchmark") -> Table:
    table = Table(title=f"{title} ({report.acceleration.upper()})", header_style="bold")
    for column in ("operation", "n", "p50", "p95", "p99", "baseline p50", "ratio"):
        operation = column == "operation"
        table.add_column(column, justify="left" if operation else "right", no_wrap=operation)
    for row in report.rows:
        base = report.row(row.baseline) if row.baseline else None
        p50, base_p50 = row.percentile(50), base.percentile(50) if base else None
        ratio = f"{p50 / base_p50:.1f}x" if p50 is not None and base_p50 else ""
        cells = [_value(row, q) for q in (50, 95, 99)]
        table.add_row(row.name, str(len(row.samples)), *cells, _value(base, 50) if base else "", ratio)
        if row.note:
            table.add_row(f"  {row.note}", "", "", "", "", "", "")
    return table


def _value(row: Row, q: int) -> str:
    value = row.percentile(q)
    if value is None:
        return "-"
    if row.unit == "s":
        return f"{value * 1000:.1f} ms"
    return f"{value:.1f} {row.unit}"


def _crash_matrix() -> None:
    """Every kill point once, against a daemon of its own on this host, as a table."""
    from ember.bench import crash
    from ember.bench.lab import Lab
    from ember.settings import Settings

    table = Table(title="Ember crash matrix (SIGKILL mid-operation, then restart)", header_style="bold")
    for column in ("killed during", "leaked", "what", "survivor answers", "snapshots restore"):
        table.add_column(column, no_wrap=column == "killed during")
    lab = Lab(Settings.from_env().images_dir)
    try:
        stderr.print("[dim]building template base for the lab's daemon[/]")
        lab.build_base()
        for point in crash.KILL_POINTS:
            stderr.print(f"[dim]killing the daemon during: {point.name}[/]")
            audit = crash.run(lab, point)
            what = ", ".join(f"{k}: {v}" for k, v in vars(audit).items() if isinstance(v, list) and v)
            answers = ["yes" if ok else "NO" for ok in (audit.survivor_ok, audit.snapshots_ok)]
            table.add_row(point.name, str(audit.leaks), what or "-", *answers)
    finally:
        lab.close()
    _print(table)


def _soak(cycles: int) -> None:
    """``cycles`` full cycles against a daemon of its own (with a pool): what drifted, and the
    daemon's memory at every sample. ``EMBER_MEMORY_TRACE=N`` also traces its allocations."""
    from ember.bench.lab import Lab
    from ember.bench.soak import WARM_UP, soak, traced_growth
    from ember.settings import Settings

    lab = Lab(Settings.from_env().images_dir)
    try:
        stderr.print("[dim]building template base for the lab's daemon[/]")
        lab.build_base()
        lab.start(pool="base=2")
        every = max(1, min(50, cycles // 10))
        result = soak(lab, cycles, every, progress=lambda text: stderr.print(f"[dim]{text}[/]"))
        sites = traced_growth(lab)
        audit = lab.audit()
        lab.stop()
    finally:
        lab.close()
    first, last = result.samples[0], result.samples[-1]
    title = f"Ember soak: {cycles} cycles in {result.seconds:.0f} s; {audit.leaks} things belong to nothing"
    table = Table(title=title, header_style="bold")
    for column in ("", f"after {first.cycle}", f"after {last.cycle}", "drift"):
        table.add_column(column, justify="left" if not column else "right")
    for name, drift in result.drift().items():
        table.add_row(name, f"{first.counts[name]:g}", f"{last.counts[name]:g}", f"{drift:+g}")
    _print(table)
    _print(_memory_curve(result))
    half = last.cycle // 2
    stdout.print(
        f"Daemon RSS {first.rss_mib:.1f} -> {last.rss_mib:.1f} MiB: {result.rss_growth_mib():+.1f} MiB from "
        f"cycle 0, which comes after {WARM_UP} warm-up cycles (left out: a first cycle fills caches, "
        f"such as a spare memory image and the SDK's connections); {result.rss_growth_mib(half):+.1f} MiB "
        f"over the last {last.cycle - half} cycles (a leak grows there as much as in the first half)."
    )
    grown = ", ".join(f"{name} {count:+d}" for name, count in result.grown_types())
    stdout.print(f"Python objects that grew most: {grown or 'none'}.")
    if sites:
        stdout.print("Allocation sites that grew most (tracemalloc, first sample to last):")
        for line in sites:
            stdout.print(f"  {line}", highlight=False)


def _memory_curve(result: Soak) -> Table:
    """The daemon's memory at every sample: a leak grows at each, a warm-up stops."""
    table = Table(title="The daemon's memory at every sample", header_style="bold")
    for column in (
        "cycle",
        "s",
        "RSS MiB",
        "malloc in use",
        "of it SQLite",
        "malloc free",
        "objects",
        "threads",
    ):
        table.add_column(column, justify="right")
    for sample in result.samples:
        memory = sample.memory
        table.add_row(
            str(sample.cycle),
            f"{sample.seconds:.0f}",
            f"{sample.rss_mib:.1f}",
            _mib(memory["malloc_in_use_bytes"]),
            _mib(memory["sqlite_bytes"]),
            _mib(memory["malloc_free_bytes"]),
            str(memory["objects"]),
            str(len(memory["threads"])),
        )
    return table


def _mib(size_bytes: int | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 2**20:.1f} MiB"


def _print(table: Table) -> None:
    out = stdout if stdout.is_terminal else Console(highlight=False, width=132)
    out.print(table)
