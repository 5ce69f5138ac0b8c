"""Kernel samepage merging (KSM) of VMM memory, for hosts whose owner asks for it (EMBER_KSM=on).

KSM lets the kernel's ``ksmd`` find private pages of different processes that hold
the same bytes and keep one copy-on-write copy. Restored sandboxes have a lot of
those: the relocated data of QEMU's libraries, guest pages written alike after
a restore, pages of zeros. But a merged page is also a side channel between
sandboxes: a guest that times its own writes can tell whether another sandbox
holds a page with contents it guessed (CVE-2015-2877; the kernel's advice: "if
you care about this attack vector, disable deduplication"). So it is off unless
the host's owner turns it on, for sandboxes that trust each other (one team's
agents, say). The README has the measured gain and the CPU it costs.

On, the daemon starts ``ksmd`` when it starts (``/sys/kernel/mm/ksm/run``) and
puts back what it found when it stops, and every VMM's private memory is a
candidate (``PR_SET_MEMORY_MERGE``, set by the jailer): QEMU itself marks only
the guest's RAM.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("ember.vmm")

SYSFS = Path("/sys/kernel/mm/ksm")


class HostKsm:
    """The host's ksmd, run while the daemon runs."""

    def __init__(self, sysfs: Path = SYSFS) -> None:
        self._run = sysfs / "run"
        self._sysfs = sysfs
        self._found: str | None = None  # what ``run`` held before the daemon started ksmd
        #: Whether VMMs started now should make their memory mergeable.
        self.active = False

    def start(self) -> None:
        """Start ksmd (a failure is logged: the sandboxes run on, unmerged)."""
        try:
            found = self._run.read_text().strip()
            if found != "1":
                self._run.write_text("1\n")
                self._found = found
        except OSError as exc:
            log.warning("EMBER_KSM=on, but this host's KSM cannot be started (%s): nothing is merged", exc)
            return
        self.active = True

    def stop(self) -> None:
        """Put ``run`` back as the daemon found it, unless someone changed it since."""
        self.active = False
        found, self._found = self._found, None
        if found is None:
            return
        try:
            if self._run.read_text().strip() == "1":
                self._run.write_text(f"{found}\n")
        except OSError as exc:
            log.warning("could not put KSM back as it was (run=%s): %s", found, exc)

    def describe(self) -> str:
        if not self.active:
            return "KSM off"
        scan = (self._sysfs / "pages_to_scan").read_text().strip()
        sleep = (self._sysfs / "sleep_millisecs").read_text().strip()
        return (
            f"KSM ON (EMBER_KSM=on: identical pages are merged across sandboxes, a timing side "
            f"channel between them; ksmd scans {scan} pages every {sleep} ms)"
        )
