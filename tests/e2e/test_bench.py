"""``ember bench --quick``: the benchmark suite runs end to end, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_support import Daemon, run_cli

from ember import Sandbox


def test_quick_bench_measures_every_operation_and_cleans_up(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_cli(daemon, "bench", "--quick", "--json", str(out), timeout_s=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["acceleration"] in ("kvm", "tcg")
    rows = {row["name"]: row for row in report["rows"]}
    for name in (
        "baseline: HTTP no-op to the daemon",
        "run_code 1+1",
        "command true",
        "create from a snapshot (restore)",
        "fork(1)",
        "fork(1) after 4 MB each way",
        "create with a cold boot",
        "upload 4 MB",
        "download 4 MB",
        "agent channel ceiling, host to guest (raw virtio-serial)",
        "agent channel ceiling, guest to host (raw virtio-serial)",
        "PSS per idle sandbox (2)",
        "PSS per idle fork (2)",
        "2 concurrent create -> run_code -> close",
    ):
        assert rows[name]["n"] >= 1 and rows[name]["p50"] > 0, rows[name]
    assert rows["run_code 1+1"]["baseline"] == "baseline: local Python REPL over a pipe"
    assert "run_code 1+1" in done.stdout and report["acceleration"].upper() in done.stdout
    assert Sandbox.list(base_url=daemon.url, api_key=daemon.api_key) == []
    assert Sandbox.list_snapshots(base_url=daemon.url, api_key=daemon.api_key) == []
