"""What a test run may not leave behind: QEMU processes of its run directory."""

from __future__ import annotations

from pathlib import Path


def qemu_pids_under(path: Path) -> list[int]:
    """Pids of QEMU processes whose command line names ``path`` (their run directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(path).encode() in cmdline:
            pids.append(int(entry.name))
    return pids
