"""Per-sandbox cgroups on both versions, on fake hierarchies: detection, limits, OOM kills, leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.vmm.cgroups import CgroupHost, CgroupsUnavailable, Limits

V2_FILES = ("cgroup.procs", "cgroup.subtree_control", "cpu.max", "cpu.weight", "memory.max",
            "memory.swap.max", "pids.max", "memory.events")  # fmt: skip
V1_FILES = {
    "cpu": ("cgroup.procs", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"),
    "memory": ("cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control"),
    "pids": ("cgroup.procs", "pids.max"),
}


class FakeKernel:
    """Makes the interface files the kernel would make in each new cgroup directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def v2(self, controllers: str) -> Path:
        unified = self.root / "unified"
        unified.mkdir()
        (unified / "cgroup.controllers").write_text(controllers + "\n")
        (unified / "cgroup.subtree_control").write_text("")
        mounts = self.root / "mounts"
        mounts.write_text(f"cgroup2 {unified} cgroup2 rw,nosuid 0 0\n")
        return mounts

    def v1(self, controllers: tuple[str, ...]) -> Path:
        lines = [f"cgroup2 {self.root / 'unified'} cgroup2 rw 0 0"]
        (self.root / "unified").mkdir()
        (self.root / "unified" / "cgroup.controllers").write_text("\n")
        for controller in controllers:
            (self.root / controller).mkdir()
            lines.append(f"cgroup {self.root / controller} cgroup rw,relatime,{controller} 0 0")
        mounts = self.root / "mounts"
        mounts.write_text("\n".join(lines) + "\n")
        return mounts

    def populate(self, host: CgroupHost, name: str) -> None:
        """What mkdir would have made: the files of a new cgroup (a real kernel makes them)."""
        cgroup = host.of(name)
        for controller, directory in cgroup.directories.items():
            directory.mkdir(parents=True, exist_ok=True)
            for file in V2_FILES if host.version == 2 else V1_FILES[controller]:
                (directory / file).touch()
        for parent in (host.mounts["cpu"] / "ember", host.mounts["cpu"] / "ember" / host.instance):
            if host.version == 2:
                (parent / "cgroup.subtree_control").touch()


def test_v2_is_chosen_when_it_has_every_controller_and_gets_the_limits(tmp_path):
    kernel = FakeKernel(tmp_path)
    host = CgroupHost.detect("inst01", kernel.v2("cpuset cpu io memory pids"))
    assert host.version == 2 and host.describe() == "cgroup v2 cpu+memory+pids"
    kernel.populate(host, "sbx")
    cgroup = host.create("sbx", Limits(vcpus=2, memory_bytes=700 << 20, pids=128))
    directory = host.mounts["cpu"] / "ember" / "inst01" / "sbx"
    assert cgroup.procs_files == (directory / "cgroup.procs",)
    assert (directory / "cpu.max").read_text() == "200000 100000"
    assert (directory / "cpu.weight").read_text() == "200"
    assert (directory / "memory.max").read_text() == str(700 << 20)
    assert (directory / "memory.swap.max").read_text() == "0"
    assert (directory / "pids.max").read_text() == "128"
    # Each level hands the controllers down to the next.
    for level in (host.mounts["cpu"], host.mounts["cpu"] / "ember", host.mounts["cpu"] / "ember" / "inst01"):
        assert (level / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert cgroup.oom_kills() == 1


def test_v1_hierarchies_are_used_when_v2_lacks_the_controllers(tmp_path):
    kernel = FakeKernel(tmp_path)
    host = CgroupHost.detect("inst01", kernel.v1(("cpu", "cpuacct", "memory", "pids")))
    assert host.version == 1
    kernel.populate(host, "sbx")
    cgroup = host.create("sbx", Limits(vcpus=1, memory_bytes=300 << 20, pids=64))
    assert len(cgroup.procs_files) == 3
    cpu, memory, pids = (tmp_path / c / "ember" / "inst01" / "sbx" for c in ("cpu", "memory", "pids"))
    assert (cpu / "cpu.cfs_quota_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.shares").read_text() == "1024"
    assert (memory / "memory.limit_in_bytes").read_text() == str(300 << 20)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(300 << 20)
    assert (pids / "pids.max").read_text() == "64"
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup.oom_kills() == 2


def test_a_missing_controller_is_named(tmp_path):
    with pytest.raises(CgroupsUnavailable, match="pids"):
        CgroupHost.detect("inst01", FakeKernel(tmp_path).v1(("cpu", "memory")))


def test_leftovers_are_this_instances_cgroups_not_kept(tmp_path):
    kernel = FakeKernel(tmp_path)
    host = CgroupHost.detect("inst01", kernel.v1(("cpu", "memory", "pids")))
    for name in ("alive", "gone"):
        kernel.populate(host, name)
    other = CgroupHost.detect("inst02", tmp_path / "mounts")
    kernel.populate(other, "theirs")
    assert [c.directories["memory"].name for c in host.leftovers({"alive"})] == ["gone"]


def test_removing_a_cgroup_deletes_its_directories(tmp_path):
    kernel = FakeKernel(tmp_path)
    host = CgroupHost.detect("inst01", kernel.v1(("cpu", "memory", "pids")))
    host.of("sbx").directories["cpu"].mkdir(parents=True)  # only one of three made
    host.of("sbx").remove()
    assert not host.of("sbx").directories["cpu"].exists()
