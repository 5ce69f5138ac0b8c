"""Cluster-wide listings: the same request asked of every host, the answers merged into one.

Each host answers for itself (with the caller's own key, so each filters by owner
as it always does). A host that does not answer is left out, and for Ember's own
listing its sandboxes are shown as the catalog last had them; sandboxes lost with
their host are listed as dead, with the reason, when ended ones are asked for.
Snapshots held by several hosts are listed once; a template once, by name.
"""

from __future__ import annotations

from typing import Any

from ember.cluster.records import SandboxEntry

#: What each listing's items are keyed by, to list a copy held by several hosts once.
_IDENTITY = {"snapshots": ("id", "snapshotID"), "templates": ("name",)}


def merge(surface: str, what: str, answers: list[Any]) -> Any:
    """One answer from every host's: Ember's ``{what: [...]}`` objects, or E2B's plain lists."""
    if surface == "ember":
        key = "pools" if what == "pools" else "snapshots" if what == "templates" else what
        items = [item for answer in answers for item in answer.get(key, [])]
        return {key: _unique(items, _IDENTITY.get(what, ()))}
    items = [item for answer in answers for item in answer]
    return _unique(items, _IDENTITY.get(what, ()))


def _unique(items: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    if not fields:
        return items
    seen: set[Any] = set()
    kept = []
    for item in items:
        identity = next((item.get(f) for f in fields if item.get(f) is not None), None)
        if identity is None or identity not in seen:
            seen.add(identity)
            kept.append(item)
    return kept


def catalogued(
    entries: list[SandboxEntry], owner: str, silent_hosts: set[str], ended: bool
) -> list[dict[str, Any]]:
    """Ember's sandbox items that no host can give: on a silent host, or lost with theirs."""
    found = []
    for entry in entries:
        if entry.owner != owner or not entry.info:
            continue
        if entry.state == "running" and entry.host in silent_hosts:
            found.append(entry.info)
        elif entry.state == "lost" and ended:
            found.append(lost_info(entry))
    return found


def lost_info(entry: SandboxEntry) -> dict[str, Any]:
    """A lost sandbox as Ember's API shows it: dead, with the reason it was lost."""
    return {**entry.info, "state": "dead", "ended_at": entry.ended_at, "end_reason": entry.end_reason}
