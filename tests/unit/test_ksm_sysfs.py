"""KSM when asked for: ksmd runs while the daemon does, and is put back as it was found."""

from __future__ import annotations

import pytest

from ember.settings import Settings
from ember.vmm.ksm import HostKsm


@pytest.fixture
def sysfs(tmp_path):
    (tmp_path / "run").write_text("0\n")
    (tmp_path / "pages_to_scan").write_text("100\n")
    (tmp_path / "sleep_millisecs").write_text("20\n")
    return tmp_path


def test_ksmd_runs_from_start_to_stop_and_then_is_as_it_was(sysfs):
    ksm = HostKsm(sysfs, sysfs / "holders")
    assert not ksm.active and ksm.describe() == "KSM off"
    ksm.start()
    assert ksm.active and (sysfs / "run").read_text() == "1\n"
    assert "side channel" in ksm.describe() and "100 pages every 20 ms" in ksm.describe()
    ksm.stop()
    assert not ksm.active and (sysfs / "run").read_text() == "0\n"


def test_a_ksmd_already_running_is_left_running(sysfs):
    (sysfs / "run").write_text("1\n")
    ksm = HostKsm(sysfs, sysfs / "holders")
    ksm.start()
    ksm.stop()
    assert (sysfs / "run").read_text() == "1\n"


def test_a_change_made_by_someone_else_meanwhile_is_kept(sysfs):
    ksm = HostKsm(sysfs, sysfs / "holders")
    ksm.start()
    (sysfs / "run").write_text("2\n")  # the host's owner unmerged everything
    ksm.stop()
    assert (sysfs / "run").read_text() == "2\n"


def test_ksmd_stops_only_with_the_last_daemon_that_runs_it(sysfs):
    first, second = HostKsm(sysfs, sysfs / "holders"), HostKsm(sysfs, sysfs / "holders")
    first.start()
    second.start()
    first.stop()
    assert (sysfs / "run").read_text() == "1\n", "the other daemon's sandboxes still merge"
    second.stop()
    assert (sysfs / "run").read_text() == "0\n"


def test_a_killed_daemon_holds_ksmd_no_longer(sysfs):
    dead = sysfs / "holders" / f"{2**22 + 1}.dead"  # above pid_max: no such process
    ksm = HostKsm(sysfs, sysfs / "holders")
    ksm.start()
    dead.touch()
    ksm.stop()
    assert (sysfs / "run").read_text() == "0\n" and not dead.exists()


def test_a_host_without_ksm_runs_sandboxes_unmerged(tmp_path, caplog):
    ksm = HostKsm(tmp_path / "missing", tmp_path / "holders")
    ksm.start()
    assert not ksm.active and "cannot be started" in caplog.text
    ksm.stop()


def test_ksm_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("EMBER_KSM", raising=False)
    assert Settings.from_env().ksm is False
    monkeypatch.setenv("EMBER_KSM", "on")
    assert Settings.from_env().ksm is True
    monkeypatch.setenv("EMBER_KSM", "maybe")
    with pytest.raises(ValueError, match="EMBER_KSM"):
        Settings.from_env()
