"""What a test run may not leave behind: QEMU processes of its run directory, sandbox networks,
cgroups and uid claims."""

from __future__ import annotations

from pathlib import Path

from ember.network.host import NETNS_DIR
from ember.settings import Settings
from ember.vmm.cgroups import CGROUP_ROOT, CONTROLLERS
from ember.vmm.uids import UidRange


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


def jail_leftovers(data_dir: Path) -> list[str]:
    """Cgroups and uid claims that the engine of ``data_dir`` made and has not released."""
    settings = Settings(data_dir=data_dir)
    left = [str(p) for c in CONTROLLERS if (p := CGROUP_ROOT / c / "ember" / settings.instance).exists()]
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        left += [str(p) for p in [CGROUP_ROOT / "ember" / settings.instance] if p.exists()]
    held = UidRange(*settings.uid_range, settings.instance).holders()
    return left + [f"uid {uid} (sandbox {sandbox_id})" for uid, sandbox_id in held.items()]
