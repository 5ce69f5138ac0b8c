"""The jailer process on its own, with a shell in place of a VMM: what a jailed process is and sees."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from ember.errors import VmmError
from ember.vmm.jail import Jail, Jailer, Process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building a jail needs root")

UID = 299_950


async def run_jailed(
    tmp_path: Path, script: str, process: Process | None = None, **jail: object
) -> tuple[int, str]:
    """Run ``sh -c script`` jailed with ``tmp_path/own`` bound writable; its exit status and output."""
    own = tmp_path / "own"
    own.mkdir(exist_ok=True)
    os.chown(own, UID, UID)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    settings = {"uid": UID, "gid": UID, "root": root, "binds": ((own, True),)} | jail
    output = tmp_path / "output"
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    jailer = Jailer()
    try:
        argv = ["/bin/sh", "-c", script]
        pid = await jailer.spawn(argv, [fd, fd], Jail(**settings), process)  # type: ignore[arg-type]
        os.close(fd)
        _exited(pid)
        status = await jailer.exit_status(pid)
    finally:
        await jailer.close()
    return status, output.read_text()


def _exited(pid: int) -> None:
    pidfd = os.pidfd_open(pid)  # readable once the process has exited, child of ours or not
    try:
        assert select.select([pidfd], [], [], 30)[0], "the jailed process did not end"
    finally:
        os.close(pidfd)


async def test_a_jailed_process_has_its_own_uid_no_privileges_and_only_its_files(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("the host's")
    status, output = await run_jailed(
        tmp_path,
        f"id -u; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls -a /; "
        f"cat {secret} 2>&1; ls {tmp_path}; touch {tmp_path}/own/written && echo wrote; "
        "touch /usr/x 2>&1; ls /proc | grep -c . ; cat /etc/hostname 2>&1; exit 3",
    )
    assert status == 3
    lines = output.splitlines()
    assert lines[0] == str(UID) and lines[1] == str(UID)
    assert lines[2:5] == ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1"]
    listing = lines[5 : lines.index("sbin") + 3]
    assert set(listing) >= {"usr", "dev", "proc", "tmp"} and "root" not in listing and "etc" not in listing
    assert "No such file" in output  # the secret does not exist in there
    assert lines[lines.index("own") : lines.index("own") + 2] == ["own", "wrote"]
    assert (tmp_path / "own" / "written").stat().st_uid == UID
    assert "Read-only file system" in output
    assert "etc/hostname: No such file" in output


async def test_a_jail_that_cannot_be_built_says_which_step_failed(tmp_path):
    with pytest.raises(VmmError, match=r"in its jail: mount .*missing.*No such file"):
        await run_jailed(tmp_path, "true", binds=((tmp_path / "missing", False),))
    assert not list((tmp_path / "root").iterdir()), "nothing of the failed jail is left on the host"


async def test_a_process_gets_its_environment_and_memory_settings_and_nothing_of_the_daemons(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EMBER_SECRET", "the daemon's")
    script = "env | sort; grep THP_enabled /proc/self/status; grep merge_any /proc/self/ksm_stat"
    status, output = await run_jailed(tmp_path, script)
    assert status == 0, output
    lines = output.splitlines()
    assert "EMBER_SECRET" not in output, output
    assert "THP_enabled:\t1" in lines and "ksm_merge_any: no" in lines, output
    process = Process(env={"MALLOC_ARENA_MAX": "2"}, huge_pages=False, merge=True)
    status, output = await run_jailed(tmp_path, script, process)
    assert status == 0, output
    lines = output.splitlines()
    assert lines[0] == "MALLOC_ARENA_MAX=2" and "EMBER_SECRET" not in output, output
    assert "THP_enabled:\t0" in lines and "ksm_merge_any: yes" in lines, output
