"""What the benchmark reads of this host, where the daemon runs: a sandbox's QEMU
process, its CPU time and PSS, its probe port's socket, the CPU every process of the
host used, and KSM."""

from __future__ import annotations

import os
import time
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


def probe_socket(sandbox_id: str) -> str | None:
    """The unix socket of the sandbox's probe port, when its QEMU runs on this host."""
    process = qemu_process(sandbox_id)
    try:
        arguments = (process / "cmdline").read_bytes().decode().split("\0") if process else []
    except OSError:
        return None
    for argument in arguments:
        if argument.startswith("socket,id=probe,"):
            return argument.split("path=", 1)[1].split(",", 1)[0]
    return None


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


def ksm_settled(timeout_s: float = 600) -> float | None:
    """When the host's ksmd runs: wait for two full scans from now (what is mergeable then
    is merged); the seconds waited, or None when ksmd does not run."""
    ksm = Path("/sys/kernel/mm/ksm")
    try:
        if (ksm / "run").read_text().strip() != "1":
            return None
        started, first = time.monotonic(), int((ksm / "full_scans").read_text())
        while int((ksm / "full_scans").read_text()) < first + 2 and time.monotonic() - started < timeout_s:
            time.sleep(1)
    except OSError:
        return None
    return time.monotonic() - started
