"""A network policy for the API from the short form people type: a mode and a list of rules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ember.protocol.egress import split_rules


def network_policy(
    mode: str | None = None, allow: Iterable[str] = (), packages: bool = False
) -> dict[str, Any] | None:
    """``{"mode", "domains", "cidrs", "packages"}`` for the API; None (no network) when nothing is given.

    A rule is a CIDR when it parses as one, otherwise a domain (``api.example.com``,
    ``*.example.com``); the daemon checks both.
    """
    rules = list(allow)
    if mode is None and not rules and not packages:
        return None
    policy: dict[str, Any] = {**split_rules(rules), "packages": packages}
    if mode is not None:
        policy["mode"] = mode
    return policy
