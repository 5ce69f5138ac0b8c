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
puts back what it found when the last daemon of the host that runs it stops
(each holds a file in ``HOLDERS``, named by its pid; a killed daemon's is
dropped), and every VMM's private memory is a candidate (``PR_SET_MEMORY_MERGE``,
set by the jailer): QEMU itself marks only the guest's RAM.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("ember.vmm")

SYSFS = Path("/sys/kernel/mm/ksm")
HOLDERS = Path("/run/ember/ksm")
#: In ``HOLDERS``: what ``run`` held before the first holder started ksmd.
_FOUND = "found"
_LOCK = "lock"


class HostKsm:
    """The host's ksmd, run while any daemon that asked for it runs."""

    def __init__(self, sysfs: Path = SYSFS, holders: Path = HOLDERS) -> None:
        self._run = sysfs / "run"
        self._sysfs = sysfs
        self._holders = holders
        self._me = holders / f"{os.getpid()}.{secrets.token_hex(4)}"
        #: Whether VMMs started now should make their memory mergeable.
        self.active = False

    def start(self) -> None:
        """Start ksmd (a failure is logged: the sandboxes run on, unmerged)."""
        try:
            with self._locked():
                found = self._run.read_text().strip()
                if not self._others() and found != "1":
                    (self._holders / _FOUND).write_text(found)
                    self._run.write_text("1\n")
                self._me.touch()
        except OSError as exc:
            log.warning("EMBER_KSM=on, but this host's KSM cannot be started (%s): nothing is merged", exc)
            return
        self.active = True

    def stop(self) -> None:
        """Once no other daemon holds ksmd, put ``run`` back as the first found it, unless
        someone changed it since."""
        if not self.active:
            return
        self.active = False
        try:
            with self._locked():
                self._me.unlink(missing_ok=True)
                found_file = self._holders / _FOUND
                if self._others() or not found_file.exists():
                    return
                found = found_file.read_text().strip()
                found_file.unlink()
                if self._run.read_text().strip() == "1":
                    self._run.write_text(f"{found}\n")
        except OSError as exc:
            log.warning("could not put KSM back as it was: %s", exc)

    def _others(self) -> list[Path]:
        """The other live holders; those of daemons that died are dropped."""
        others = []
        for holder in self._holders.iterdir():
            pid, dot, _ = holder.name.partition(".")
            if not dot or not pid.isdigit() or holder == self._me:
                continue
            if Path(f"/proc/{pid}").exists():
                others.append(holder)
            else:
                holder.unlink(missing_ok=True)
        return others

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._holders.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._holders / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def describe(self) -> str:
        if not self.active:
            return "KSM off"
        scan = (self._sysfs / "pages_to_scan").read_text().strip()
        sleep = (self._sysfs / "sleep_millisecs").read_text().strip()
        return (
            f"KSM ON (EMBER_KSM=on: identical pages are merged across sandboxes, a timing side "
            f"channel between them; ksmd scans {scan} pages every {sleep} ms)"
        )
