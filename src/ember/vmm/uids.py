"""Unprivileged identities for VMMs: one uid (and the gid of the same number) per sandbox.

Uids come from a configured range (``EMBER_UID_RANGE``, default 200000-265535,
above the ranges Debian gives to users and to subordinate ids). A uid is claimed
host-wide by creating ``CLAIMS/<uid>`` exclusively, so that two daemons on one
host never hand out the same one; the file names the daemon instance and the
sandbox, so that a restarted daemon releases the claims its predecessor left.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ember.errors import ResourceExhaustedError

CLAIMS = Path("/run/ember/uids")


class UidRange:
    """Hands out and takes back the uids of ``first..last`` for one daemon instance."""

    def __init__(self, first: int, last: int, instance: str, claims: Path = CLAIMS) -> None:
        if not 0 < first <= last:
            raise ValueError(f"a uid range is two positive numbers, first <= last, not {first}-{last}")
        self.first, self.last = first, last
        self.instance = instance
        self.claims = claims

    def claim(self, sandbox_id: str) -> int:
        """A uid nobody on this host holds, now held for ``sandbox_id``."""
        self.claims.mkdir(parents=True, exist_ok=True, mode=0o700)
        taken = {int(name) for name in os.listdir(self.claims) if name.isdigit()}
        for uid in range(self.first, self.last + 1):
            if uid in taken:
                continue
            try:
                fd = os.open(self.claims / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another daemon took it a moment ago
                continue
            with os.fdopen(fd, "w") as claim:
                claim.write(f"{self.instance} {sandbox_id}\n")
            return uid
        raise ResourceExhaustedError(
            f"every uid of the sandbox uid range {self.first}-{self.last} is in use; "
            "end sandboxes or widen EMBER_UID_RANGE"
        )

    def release(self, uid: int) -> None:
        """Give ``uid`` back, if this instance holds it. Idempotent."""
        path = self.claims / str(uid)
        if self._holder(path)[0] == self.instance:
            path.unlink(missing_ok=True)

    def holders(self) -> dict[int, str]:
        """uid -> sandbox id, for every claim of this instance."""
        held = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.claims):
                instance, sandbox_id = self._holder(self.claims / name)
                if name.isdigit() and instance == self.instance:
                    held[int(name)] = sandbox_id
        return held

    @staticmethod
    def _holder(path: Path) -> tuple[str, str]:
        try:
            instance, _, sandbox_id = path.read_text().strip().partition(" ")
        except OSError:
            return "", ""
        return instance, sandbox_id
