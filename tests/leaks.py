"""What a test run may not leave behind: QEMU processes of its run directory, sandbox networks."""

from __future__ import annotations

from pathlib import Path

from ember.network.host import NETNS_DIR
from ember.settings import Settings


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


def sandbox_networks_of(data_dir: Path) -> list[str]:
    """Network namespaces that the engine of ``data_dir`` made and has not removed."""
    prefix = f"ember-{Settings(data_dir=data_dir).instance}-"
    return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)] if NETNS_DIR.is_dir() else []
