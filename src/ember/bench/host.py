"""What the benchmark reads of this host, where the daemon runs: a sandbox's QEMU
process, its CPU time and PSS, and the CPU every process of the host used."""

from __future__ import annotations

import os
from pathlib import Path

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def qemu_process(sandbox_id: str) -> Path | None:
    """``/proc/PID`` of the sandbox's QEMU, when it runs on this host."""
    marker = f"process=ember-{sandbox_id}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                return entry
        except OSError:
            continue
    return None


def qemu_cpu_s(sandbox_id: str) -> float | None:
    """CPU time the sandbox's QEMU process has used, when it runs on this host."""
    process = qemu_process(sandbox_id)
    try:
        fields = (process / "stat").read_text().rsplit(")", 1)[1].split() if process else None
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S if fields else None


def pss_mib(process: Path | None) -> float | None:
    """PSS of a process (``/proc/PID``), when it runs on this host."""
    try:
        for line in (process / "smaps_rollup").read_text().splitlines() if process else ():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_used_s() -> float:
    """CPU time every process of the host has used since boot, with what the hypervisor
    under it took (steal): ``/proc/stat``'s first line, all but idle and I/O wait."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) * _TICK_S
