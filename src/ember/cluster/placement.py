"""Placement: which host a new sandbox goes to (pure: members and catalog in, a ranking out).

Best of K: among the live hosts that can take the sandbox (enough free memory,
and the snapshot or template it resumes, or the means to copy it), K are drawn at
random and the least used wins: the smallest share of its sandbox memory
committed, counting sandboxes placed but not yet running, then the fewest
sandboxes, then the lowest load. Random draws keep many gateways that place at
once from all choosing the same host; comparing two is nearly as good as
comparing all (the power of two choices) and costs nothing as the cluster grows.

A snapshot lives where it was taken: its holders come first when one of them
fits; another host gets it only when none does, and then copies it (the caller
does). Templates are copied to every host ahead of time, so hosts that have the
template come first, and the others only when none of those fits.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ember.cluster.records import HostRecord


@dataclass(frozen=True)
class Want:
    """What a create asks of its host."""

    memory_mib: int
    #: Hosts holding the snapshot it restores (empty: none asked).
    holders: Collection[str] = ()
    #: The template it resumes, which hosts list when they have it.
    template: str | None = None
    #: A host named by the caller: only that one.
    pinned: str | None = None


@dataclass(frozen=True)
class Load:
    """What this placer knows beyond the hosts' own reports, per host name."""

    #: Memory of the running sandboxes the catalog puts there.
    committed_mib: Mapping[str, int]
    #: Sandboxes the catalog puts there.
    sandboxes: Mapping[str, int]
    #: Memory of the creates this placer sent there that are not in the catalog yet.
    pending_mib: Mapping[str, int]


def rank(
    hosts: Sequence[HostRecord], want: Want, load: Load, choices: int, draw: random.Random | None = None
) -> list[HostRecord]:
    """The hosts to try, best first: the best of ``choices`` random fitting ones, then the rest by score.

    Empty when no host can take the sandbox.
    """
    draw = draw or random.Random()
    fitting = [h for h in hosts if h.role == "host" and _fits(h, want, load)]
    if want.pinned is not None:
        fitting = [h for h in fitting if h.name == want.pinned]
    for preferred in (_holding(fitting, want), _with_template(fitting, want), fitting):
        if preferred:
            break
    else:
        return []
    sample = draw.sample(preferred, min(max(choices, 1), len(preferred)))
    best = min(sample, key=lambda h: _score(h, load))
    rest = sorted((h for h in fitting if h is not best), key=lambda h: _score(h, load))
    return [best, *rest]


def _fits(host: HostRecord, want: Want, load: Load) -> bool:
    return host.free_memory_mib - load.pending_mib.get(host.name, 0) >= want.memory_mib


def _holding(hosts: list[HostRecord], want: Want) -> list[HostRecord]:
    return [h for h in hosts if h.name in want.holders]


def _with_template(hosts: list[HostRecord], want: Want) -> list[HostRecord]:
    return [h for h in hosts if want.template is not None and want.template in h.templates]


def _score(host: HostRecord, load: Load) -> tuple[float, int, float]:
    used = load.committed_mib.get(host.name, 0) + load.pending_mib.get(host.name, 0)
    # Free memory is what is left beside what is committed (restored sandboxes share pages,
    # so their committed memory is more than they use): the share says how full a host is.
    share = used / max(used + host.free_memory_mib, 1)
    return share, load.sandboxes.get(host.name, 0), host.load1 / max(host.vcpus, 1)
