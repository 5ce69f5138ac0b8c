"""The guest's clocksource under TCG: the host's TSC frequency, told on the kernel command line.

Under TCG the guest's TSC *is* the host's (QEMU reads the host counter), but the
guest kernel must measure its frequency against the emulated PIT at boot, and on
a busy host that measurement fails ("Unable to calibrate against PIT"). The
kernel then marks the TSC unstable and keeps time with ``refined-jiffies``,
which loses ticks: a guest clock measured here ran 0.6 % fast, and the guest
loses its tickless idle. ``tsc_early_khz`` gives the kernel the frequency the
host kernel measured, so every boot gets the TSC clocksource whatever the load.
"""

from __future__ import annotations

import logging
import re
import subprocess

log = logging.getLogger("ember.vmm")

# Most precise first: the refined calibration, then the early detection.
_HOST_TSC_LINES = (
    re.compile(r"tsc: Refined TSC clocksource calibration: (\d+)\.(\d{3}) MHz"),
    re.compile(r"tsc: Detected (\d+)\.(\d{3}) MHz (?:processor|TSC)"),
)


def parse_tsc_khz(kernel_log: str) -> int | None:
    """The host TSC frequency in kHz that the host kernel logged at boot, or None."""
    for pattern in _HOST_TSC_LINES:
        found = pattern.findall(kernel_log)
        if found:
            mhz, fraction = found[-1]
            return int(mhz) * 1000 + int(fraction)
    return None


def host_tsc_khz() -> int | None:
    """Read the host kernel's log for its TSC frequency (None when it is not there)."""
    try:
        kernel_log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot read the host kernel log for its TSC frequency (%s)", exc)
        return None
    khz = parse_tsc_khz(kernel_log)
    if khz is None:
        log.warning(
            "the host kernel log no longer says its TSC frequency: TCG guests calibrate "
            "their own, and their clocks may drift when they boot on a busy host"
        )
    return khz
