"""The guest's clocksource under TCG: the host's TSC frequency, told on the kernel command line.

Under TCG the guest's TSC *is* the host's (QEMU reads the host counter), but the
guest kernel must measure its frequency against the emulated PIT at boot, and on
a busy host that measurement fails ("Unable to calibrate against PIT"). The
kernel then marks the TSC unstable and keeps time with ``refined-jiffies``,
which loses ticks: a guest clock measured here ran 0.6 % fast, and the guest
loses its tickless idle. ``tsc_early_khz`` gives the kernel the frequency the
host kernel measured, so every boot gets the TSC clocksource whatever the load.

The kernel's log is a ring: after days of uptime its boot lines are gone. So the
frequency, once read, is kept for the rest of the host's boot (in /run, with the
boot's id), and a daemon started later still finds it.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger("ember.vmm")

#: ``<boot id> <kHz>``: the frequency read from the log during this boot of the host.
KEPT = Path("/run/ember/host-tsc-khz")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

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


def host_tsc_khz(kept: Path = KEPT) -> int | None:
    """The host's TSC frequency: from its kernel's log, else as kept from it earlier in this
    boot (None when neither has it)."""
    boot = BOOT_ID.read_text().strip()
    try:
        kernel_log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot read the host kernel log for its TSC frequency (%s)", exc)
        kernel_log = ""
    khz = parse_tsc_khz(kernel_log)
    if khz is not None:
        _keep(kept, f"{boot} {khz}\n")
        return khz
    khz = kept_khz(kept.read_text() if kept.exists() else "", boot)
    if khz is None:
        log.warning(
            "the host kernel log no longer says its TSC frequency: TCG guests calibrate "
            "their own, and their clocks may drift when they boot on a busy host"
        )
    return khz


def kept_khz(kept: str, boot: str) -> int | None:
    """The frequency in ``kept`` (``<boot id> <kHz>``) if it was read during ``boot``."""
    fields = kept.split()
    if len(fields) == 2 and fields[0] == boot and fields[1].isdigit():
        return int(fields[1])
    return None


def _keep(kept: Path, text: str) -> None:
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_suffix(".part")
        partial.write_text(text)
        partial.replace(kept)
    except OSError as exc:  # not root: the next daemon reads the log again
        log.warning("cannot keep the host TSC frequency in %s (%s)", kept, exc)
