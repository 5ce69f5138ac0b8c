"""What a jailed VMM looks like from the host: its identity, its view of the files, its cgroup."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ember.engine import Sandbox

#: Parts of every jail that are the host's shared, read-only system (or pseudo) files.
SYSTEM = ("/usr", "/proc", "/bin", "/sbin", "/lib", "/lib64")


@dataclass(frozen=True)
class JailedProcess:
    uid: int
    gid: int
    cap_eff: int
    cap_bnd: int
    no_new_privs: int
    seccomp: int
    net_namespace: str
    mount_namespace: str
    files: frozenset[str]  # every regular file the process can see, outside SYSTEM
    environment: dict[str, str]
    huge_pages: int  # THP_enabled


def inspect(pid: int) -> JailedProcess:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return JailedProcess(
        uid=int(status["Uid"].split()[0]),
        gid=int(status["Gid"].split()[0]),
        cap_eff=int(status["CapEff"], 16),
        cap_bnd=int(status["CapBnd"], 16),
        no_new_privs=int(status["NoNewPrivs"]),
        seccomp=int(status["Seccomp"]),
        net_namespace=os.readlink(f"/proc/{pid}/ns/net"),
        mount_namespace=os.readlink(f"/proc/{pid}/ns/mnt"),
        files=frozenset(visible_files(pid)),
        environment=dict(
            entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if entry
        ),
        huge_pages=int(status["THP_enabled"]),
    )


def visible_files(pid: int) -> list[str]:
    """Paths (as the process sees them) of the regular files in its root, system parts aside."""
    root = f"/proc/{pid}/root"
    found = []
    for directory, subdirectories, names in os.walk(root):
        inside = directory[len(root) :] or "/"
        subdirectories[:] = [d for d in subdirectories if os.path.join(inside, d) not in SYSTEM]
        regular = [n for n in names if stat.S_ISREG(os.lstat(os.path.join(directory, n)).st_mode)]
        found += [os.path.join(inside, name) for name in regular]  # not device nodes, sockets, links
    return found


def cgroup_processes(pid: int) -> dict[str, list[int]]:
    """Hierarchy -> the pids in the process's cgroup there (v1: cpu, memory, pids; v2: unified)."""
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    members = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in ("cpu", "memory", "pids") or (controller == "" and unified):
                hierarchy = Path("/sys/fs/cgroup") / controller
                procs = (hierarchy / path.lstrip("/") / "cgroup.procs").read_text().split()
                members[controller or "unified"] = [int(p) for p in procs]
    return members


def own_files(sandbox: Sandbox) -> set[str]:
    """What a sandbox's VMM may see: its run directory, its disk layers, its kernel and base image."""
    record = sandbox.record
    own = {record.rootfs, *record.disk_chain}
    if record.memory_shared:  # booted: it has its kernel; a restore maps a memfd and loads no kernel
        own.add(record.kernel)
    return own


def assert_jailed(sandbox: Sandbox) -> None:
    pid = sandbox.vm.pid
    assert pid is not None
    seen = inspect(pid)
    assert seen.uid >= 200_000 and seen.gid == seen.uid
    assert seen.cap_eff == 0 and seen.cap_bnd == 0
    assert seen.no_new_privs == 1
    assert seen.seccomp == 2, "QEMU's seccomp filter is in place"
    assert seen.net_namespace != os.readlink("/proc/self/ns/net"), "the VMM has no host network"
    assert seen.mount_namespace != os.readlink("/proc/self/ns/mnt")
    assert seen.environment == {"MALLOC_ARENA_MAX": "2"}, "nothing of the daemon's environment"
    assert seen.huge_pages == 0, "no transparent huge pages (ember.vmm.qemu says why)"
    run_dir = str(sandbox.vm.spec.run_dir)
    # Besides its own files it sees those of its run directory (logs, its pid file, its
    # RAM if booted), and nothing else: no other sandbox's, no state database, no keys.
    strangers = {f for f in seen.files if not f.startswith(run_dir + "/")} - own_files(sandbox)
    assert strangers == set(), f"the VMM sees files that are not its sandbox's: {strangers}"
    for name, members in cgroup_processes(pid).items():
        assert members == [pid], f"its {name} cgroup holds only its VMM"
