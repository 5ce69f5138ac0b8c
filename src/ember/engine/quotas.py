"""What one owner (an API key) may hold at once: sandboxes, vCPUs, memory, lifetime, snapshots.

The limits themselves live with the keys (the server's key store, or the
cluster's); the engine is handed a function from owner to ``Quota`` and checks
every create, fork, snapshot and lifetime change against it before anything is
made. A create holds a reservation from its check until its sandbox is counted
among the live ones, so that concurrent creates cannot together pass a limit
each of them alone respects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from ember.errors import InvalidRequestError, QuotaExceededError

#: What the limits are called on the wire and in ``ember keys quota``, with their units.
QUOTA_FIELDS = {
    "sandboxes": "running sandboxes",
    "vcpus": "vCPUs of running sandboxes",
    "memory_mb": "MiB of memory of running sandboxes",
    "lifetime_s": "seconds of lifetime per sandbox",
    "snapshots": "snapshots kept",
    "snapshot_bytes": "bytes of snapshots kept",
}


@dataclass(frozen=True)
class Quota:
    """Limits of one owner; None is no limit."""

    sandboxes: int | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    lifetime_s: int | None = None
    snapshots: int | None = None
    snapshot_bytes: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Quota:
        """Checked limits from a mapping of field -> non-negative integer or None."""
        unknown = set(values) - set(QUOTA_FIELDS)
        if unknown:
            raise InvalidRequestError(
                f"unknown quota field(s) {', '.join(sorted(unknown))}; known: {', '.join(QUOTA_FIELDS)}"
            )
        for name, value in values.items():
            least = 1 if name == "lifetime_s" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise InvalidRequestError(f"quota {name} must be an integer from {least}, or null (no limit)")
        return cls(**values)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def under(self, own: dict[str, object]) -> Quota:
        """These (default) limits with the fields a key's ``own`` names replaced (None: no limit)."""
        return Quota.from_dict({**self.to_dict(), **own})


@dataclass(frozen=True)
class Usage:
    """What an owner holds (or a request would add)."""

    sandboxes: int = 0
    vcpus: int = 0
    memory_mb: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Quotas:
    """Checks requests of owners against their quota and what they hold.

    ``limits(owner)`` gives an owner's quota; ``held(owner)`` what it holds now (one
    host's sandboxes and snapshots; a cluster's node counts the other hosts' too).
    Requests without an owner (the engine's own: the pool, template builds) are
    not limited.
    """

    def __init__(self, limits: Callable[[str], Quota], usage: Callable[[str], Usage]) -> None:
        self.limits = limits
        self.held = usage
        self._reserved: dict[str, Usage] = {}

    def usage(self, owner: str) -> Usage:
        """What ``owner`` holds, creates in flight included."""
        return self.held(owner) + self._reserved.get(owner, Usage())

    def check(self, owner: str | None, adding: Usage) -> None:
        """Raise ``QuotaExceededError`` if ``adding`` would take ``owner`` past a limit."""
        if owner is None:
            return
        quota, used = self.limits(owner), self.usage(owner)
        for name, have in used.to_dict().items():
            limit, more = getattr(quota, name), getattr(adding, name)
            if limit is not None and more > 0 and have + more > limit:
                raise QuotaExceededError(
                    f"quota exceeded: {name} would be {have + more} ({QUOTA_FIELDS[name]}), over this "
                    f"API key's limit of {limit}; end sandboxes or delete snapshots, or ask an admin to "
                    "raise it (ember keys quota)",
                    details={"quota": name, "limit": limit, "used": have, "requested": more},
                )

    @contextmanager
    def reserve(self, owner: str | None, adding: Usage) -> Iterator[Reservation]:
        """Check ``adding`` and count it as held until the block ends or the sandbox is counted."""
        reservation = Reservation(self, owner, adding)
        reservation.renew()
        try:
            yield reservation
        finally:
            reservation.release()

    def _hold(self, owner: str, adding: Usage, sign: int) -> None:
        held = self._reserved.get(owner, Usage())
        held = held + adding if sign > 0 else held - adding
        if held == Usage():
            self._reserved.pop(owner, None)
        else:
            self._reserved[owner] = held

    def lifetime(self, owner: str | None, timeout_s: float | None, age_s: float = 0.0) -> float | None:
        """The lifetime left to a sandbox ``age_s`` old: ``timeout_s``, or all its quota allows
        when none is asked for.

        Asking for longer than the quota allows is refused, not shortened: a caller
        that named a lifetime relies on it.
        """
        limit = self.limits(owner).lifetime_s if owner is not None else None
        if limit is None:
            return timeout_s
        left = max(limit - age_s, 0.0)
        if timeout_s is None:
            return left
        if timeout_s > left:
            raise QuotaExceededError(
                f"quota exceeded: {timeout_s:g} s more would make a lifetime of {age_s + timeout_s:g} s, "
                f"over this API key's limit of {limit} s; ask for less or ask an admin to raise it "
                "(ember keys quota)",
                details={
                    "quota": "lifetime_s",
                    "limit": limit,
                    "used": round(age_s, 3),
                    "requested": timeout_s,
                },
            )
        return timeout_s


class Reservation:
    """Usage counted for a create in flight, until its sandbox is counted itself.

    ``release`` is called at the moment the sandbox joins the live ones (no await
    in between), so no other request sees it twice or not at all.
    """

    def __init__(self, quotas: Quotas, owner: str | None, adding: Usage) -> None:
        self._quotas, self._owner, self._adding = quotas, owner, adding
        self._held = False

    def renew(self) -> None:
        """Check again and hold (after a pooled sandbox failed its hand-over, say)."""
        if self._held or self._owner is None:
            return
        self._quotas.check(self._owner, self._adding)
        self._quotas._hold(self._owner, self._adding, +1)
        self._held = True

    def release(self) -> None:
        if self._held and self._owner is not None:
            self._quotas._hold(self._owner, self._adding, -1)
            self._held = False
