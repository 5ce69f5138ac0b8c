"""Reading the host TSC frequency out of the host kernel's log."""

from __future__ import annotations

from ember.vmm.clock import parse_tsc_khz

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
