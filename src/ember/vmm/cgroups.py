"""A cgroup per sandbox: its VMM's CPU, memory and process count, bounded.

Both cgroup versions are found at start (``CgroupHost.detect``): the unified v2
hierarchy (Debian 12's default) when it has the ``cpu``, ``memory`` and ``pids``
controllers, else the v1 hierarchies that have them (hosts that mount v1
controllers under ``/sys/fs/cgroup/<controller>``). A sandbox's cgroup is
``ember/<instance>/<sandbox id>`` in each, so a restarted daemon finds the ones
its predecessor made. Its limits:

- CPU: a quota of the sandbox's vCPUs (a guest spinning every vCPU gets that many
  host CPUs, no more) and a weight in proportion to them, so that under
  contention each vCPU gets a fair share whatever the sandbox;
- memory: the guest's RAM plus the VMM's own overhead. What the VMM writes to
  tmpfs (a booted guest's RAM file, its console log) is charged here too. Past
  it the kernel's OOM killer ends the VMM, and only it: the cgroup holds
  nothing else; ``oom_kills`` tells the engine that this is why it ended;
- pids: the VMM's threads (it may not fork: its seccomp filter forbids it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ember.vmm")

CONTROLLERS = ("cpu", "memory", "pids")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MOUNTS = Path("/proc/self/mounts")
CPU_PERIOD_US = 100_000
#: cpu.weight (v2) of one vCPU; v1's cpu.shares scale from 1024.
WEIGHT_PER_VCPU = 100
_RMDIR_TRIES = 50


@dataclass(frozen=True)
class Limits:
    vcpus: int
    memory_bytes: int
    pids: int


class CgroupsUnavailable(Exception):
    """This host cannot give a sandbox its cgroup; the message says what is missing."""


@dataclass(frozen=True)
class Cgroup:
    """One sandbox's cgroup: a directory per hierarchy (one on v2, one per controller on v1)."""

    version: int
    directories: dict[str, Path]  # controller -> its directory (the same one for all on v2)

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(directory / "cgroup.procs" for directory in dict.fromkeys(self.directories.values()))

    @property
    def join_files(self) -> tuple[Path, ...]:
        """Where a single-threaded process writes "0" to move itself here.

        On v1 that is ``tasks``: moving one thread, the caller itself, skips the
        global lock a ``cgroup.procs`` write takes, whose RCU grace period cost
        every VMM start 10-20 ms (measured: 15 ms against 0.5). On v2 a domain
        cgroup takes whole processes only, through ``cgroup.procs``.
        """
        name = "tasks" if self.version == 1 else "cgroup.procs"
        return tuple(directory / name for directory in dict.fromkeys(self.directories.values()))

    def processes(self) -> list[int]:
        """Every process in the cgroup, in every hierarchy."""
        pids: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                pids.update(int(line) for line in procs.read_text().split())
        return sorted(pids)

    def oom_kills(self) -> int:
        """How many times the kernel's OOM killer killed a process here (over the memory limit)."""
        directory = self.directories["memory"]
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (directory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Delete the cgroup once its processes are gone (they may take a moment to leave)."""
        for directory in dict.fromkeys(self.directories.values()):
            for attempt in range(_RMDIR_TRIES):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == _RMDIR_TRIES - 1:
                        log.warning("could not remove cgroup %s: %s", directory, exc)
                        break
                    time.sleep(0.01)


class CgroupHost:
    """Where this host's cgroup controllers are, and the cgroups of one daemon instance."""

    def __init__(self, version: int, mounts: dict[str, Path], instance: str) -> None:
        self.version = version
        self.mounts = mounts  # controller -> hierarchy root
        self.instance = instance

    @classmethod
    def detect(cls, instance: str, mounts_file: Path = MOUNTS) -> CgroupHost:
        """The hierarchies holding ``cpu``, ``memory`` and ``pids``; CgroupsUnavailable if one is missing."""
        v1: dict[str, Path] = {}
        unified: Path | None = None
        for line in mounts_file.read_text().splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            mount_point, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
            if fstype == "cgroup2":
                unified = unified or mount_point
            elif fstype == "cgroup":
                for controller in CONTROLLERS:
                    if controller in options:
                        v1.setdefault(controller, mount_point)
        if unified is not None:
            available = set(_read(unified / "cgroup.controllers").split())
            if set(CONTROLLERS) <= available:
                return cls(2, dict.fromkeys(CONTROLLERS, unified), instance)
        missing = [c for c in CONTROLLERS if c not in v1]
        if not missing:
            return cls(1, v1, instance)
        raise CgroupsUnavailable(
            f"cgroup controller{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            "not mounted (neither in a cgroup v2 hierarchy nor as cgroup v1)"
        )

    def describe(self) -> str:
        return f"cgroup v{self.version} {'+'.join(CONTROLLERS)}"

    def _parent(self, controller: str) -> Path:
        return self.mounts[controller] / "ember" / self.instance

    def of(self, name: str) -> Cgroup:
        """The cgroup of sandbox ``name`` (which may not exist)."""
        if self.version == 2:
            return Cgroup(2, dict.fromkeys(CONTROLLERS, self._parent("cpu") / name))
        return Cgroup(1, {c: self._parent(c) / name for c in CONTROLLERS})

    def create(self, name: str, limits: Limits) -> Cgroup:
        """Make sandbox ``name``'s cgroup with ``limits`` (replacing a leftover one)."""
        cgroup = self.of(name)
        self._prepare_parents()
        for directory in dict.fromkeys(cgroup.directories.values()):
            directory.mkdir(exist_ok=True)
        try:
            self._limit(cgroup, limits)
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def leftovers(self, keep: set[str]) -> list[Cgroup]:
        """This instance's sandbox cgroups whose sandbox is not in ``keep``."""
        names: set[str] = set()
        for controller in CONTROLLERS:
            with contextlib.suppress(OSError):
                names.update(p.name for p in self._parent(controller).iterdir() if p.is_dir())
        return [self.of(name) for name in sorted(names - keep)]

    def close(self) -> None:
        """Remove this instance's directory once no sandbox cgroup is left in it."""
        for parent in dict.fromkeys(self._parent(c) for c in CONTROLLERS):
            with contextlib.suppress(OSError):  # absent, or a sandbox of a crashed daemon still there
                parent.rmdir()

    def _prepare_parents(self) -> None:
        if self.version == 2:
            # Each level hands the controllers down to the next (v2's subtree_control).
            level = self.mounts["cpu"]
            for child in ("ember", self.instance):
                _enable(level)
                level = level / child
                level.mkdir(exist_ok=True)
            _enable(level)
            return
        for controller in CONTROLLERS:
            self._parent(controller).mkdir(parents=True, exist_ok=True)

    def _limit(self, cgroup: Cgroup, limits: Limits) -> None:
        quota = limits.vcpus * CPU_PERIOD_US
        if cgroup.version == 2:
            directory = cgroup.directories["cpu"]
            _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(directory / "cpu.weight", str(min(10_000, WEIGHT_PER_VCPU * limits.vcpus)))
            _write(directory / "memory.max", str(limits.memory_bytes))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0")
            _write(directory / "pids.max", str(limits.pids))
            return
        cpu, memory, pids = (cgroup.directories[c] for c in CONTROLLERS)
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        _write(cpu / "cpu.shares", str(1024 * limits.vcpus))
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(pids / "pids.max", str(limits.pids))


def _enable(directory: Path) -> None:
    wanted = " ".join(f"+{c}" for c in CONTROLLERS)
    if set(CONTROLLERS) <= set(_read(directory / "cgroup.subtree_control").split()):
        return
    _write(directory / "cgroup.subtree_control", wanted)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
