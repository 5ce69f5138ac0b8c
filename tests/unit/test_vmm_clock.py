"""Reading the host TSC frequency out of the host kernel's log."""

from __future__ import annotations

import subprocess

from ember.vmm import clock
from ember.vmm.clock import kept_khz, parse_tsc_khz

BOOT_LOG = """\
[    0.000059] tsc: Detected 2299.998 MHz processor
[    0.251532] clocksource: tsc-early: mask: 0xffffffffffffffff max_cycles: 0x212733415c7
"""


def test_the_early_detection_is_read_to_the_khz():
    assert parse_tsc_khz(BOOT_LOG) == 2_299_998


def test_the_refined_calibration_wins_over_the_early_guess():
    refined = BOOT_LOG + "[    1.421142] tsc: Refined TSC clocksource calibration: 2300.012 MHz\n"
    assert parse_tsc_khz(refined) == 2_300_012


def test_a_log_without_the_tsc_lines_gives_none():
    assert parse_tsc_khz("[    0.000000] Linux version 6.1.0\n") is None


def test_a_kept_frequency_counts_only_for_the_boot_it_was_read_in():
    assert kept_khz("0a1b 2299998\n", "0a1b") == 2_299_998
    assert kept_khz("0a1b 2299998\n", "ffff") is None
    assert kept_khz("", "0a1b") is None
    assert kept_khz("0a1b nonsense\n", "0a1b") is None


def test_the_frequency_read_once_is_found_again_after_the_log_rotated(monkeypatch, tmp_path):
    logs = iter([BOOT_LOG, "[99999.0] the boot lines rotated out\n"])
    monkeypatch.setattr(
        clock.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=next(logs))
    )
    kept = tmp_path / "run/ember/host-tsc-khz"
    assert clock.host_tsc_khz(kept) == 2_299_998
    assert clock.host_tsc_khz(kept) == 2_299_998
