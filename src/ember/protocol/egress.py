"""Egress rules as people write them: one list where a rule is a CIDR or a domain.

The SDK, the CLI and E2B's surface split such a list into a network policy's
``domains`` and ``cidrs``; the engine parses and checks the policy itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def split_rules(rules: Iterable[str]) -> dict[str, list[str]]:
    """``{"domains", "cidrs"}`` from one list of rules: a rule is a CIDR when it parses as one."""
    domains, cidrs = [], []
    for rule in rules:
        try:
            ipaddress.ip_network(rule, strict=False)
        except ValueError:
            domains.append(rule)
        else:
            cidrs.append(rule)
    return {"domains": domains, "cidrs": cidrs}
