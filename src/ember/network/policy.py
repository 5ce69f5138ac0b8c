"""A sandbox's network policy: what its guest may reach, checked before anything changes.

``none`` gives the guest no network interface at all, ``full`` is outbound
access through NAT, ``allowlist`` lets through the named domains (exact, or
``*.example.com`` for its subdomains) and CIDRs and nothing else; ``packages``
adds the hosts this host's own package managers use. Whatever the policy, the
host itself, other sandboxes, link-local and metadata addresses stay out of
reach: that is enforced where the rules are made, not here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ember import errors

Mode = Literal["none", "full", "allowlist"]
MODES: tuple[str, ...] = ("none", "full", "allowlist")
MAX_RULES = 256
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class NetworkPolicy:
    mode: Mode = "none"
    domains: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    packages: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "domains": list(self.domains),
            "cidrs": list(self.cidrs),
            "packages": self.packages,
        }

    def networks(self) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(cidr) for cidr in self.cidrs]


@dataclass(frozen=True)
class DomainRules:
    """Which names an allowlist lets through (``packages`` already expanded)."""

    exact: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = field(default_factory=tuple)  # ".example.com" for "*.example.com"
    everything: bool = False

    @classmethod
    def of(cls, policy: NetworkPolicy, package_hosts: tuple[str, ...] = ()) -> DomainRules:
        if policy.mode == "full":
            return cls(everything=True)
        names = [*policy.domains, *(package_hosts if policy.packages else ())]
        exact = frozenset(n for n in names if not n.startswith("*."))
        suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        return cls(exact, suffixes)

    def allows(self, name: str) -> bool:
        name = name.rstrip(".").lower()
        return self.everything or name in self.exact or any(name.endswith(s) for s in self.suffixes)


def parse(value: Any) -> NetworkPolicy:
    """A policy from API input (None: the default, no network); InvalidRequestError says what is wrong."""
    if value is None:
        return NetworkPolicy()
    if isinstance(value, NetworkPolicy):
        return value
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, dict):
        raise errors.InvalidRequestError(
            "network must be 'none', 'full' or an object with mode/domains/cidrs"
        )
    unknown = set(value) - {"mode", "domains", "cidrs", "packages"}
    if unknown:
        raise errors.InvalidRequestError(f"unknown network field(s): {', '.join(sorted(unknown))}")
    domains = tuple(_domain(d) for d in _list(value, "domains"))
    cidrs = tuple(_cidr(c) for c in _list(value, "cidrs"))
    packages = value.get("packages", False)
    if not isinstance(packages, bool):
        raise errors.InvalidRequestError("network.packages must be true or false")
    has_rules = bool(domains or cidrs or packages)
    mode = value.get("mode", "allowlist" if has_rules else "none")
    if mode not in MODES:
        raise errors.InvalidRequestError(f"network.mode must be one of {', '.join(MODES)}, not {mode!r}")
    if has_rules and mode != "allowlist":
        raise errors.InvalidRequestError(f"domains, cidrs and packages need mode 'allowlist', not {mode!r}")
    return NetworkPolicy(mode, tuple(dict.fromkeys(domains)), tuple(dict.fromkeys(cidrs)), packages)


def _list(value: dict[str, Any], key: str) -> list[Any]:
    items = value.get(key) or []
    if not isinstance(items, list | tuple):
        raise errors.InvalidRequestError(f"network.{key} must be a list")
    if len(items) > MAX_RULES:
        raise errors.InvalidRequestError(f"network.{key} holds at most {MAX_RULES} entries")
    return list(items)


def _domain(value: Any) -> str:
    if not isinstance(value, str):
        raise errors.InvalidRequestError(f"a domain must be a string, not {type(value).__name__}")
    name = value.strip().lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    labels = bare.split(".")
    if len(bare) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise errors.InvalidRequestError(
            f"invalid domain {value!r}: use a name like 'api.example.com' or a wildcard like '*.example.com'"
        )
    return name


def _cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise errors.InvalidRequestError(f"a CIDR must be a string, not {type(value).__name__}")
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise errors.InvalidRequestError(f"invalid CIDR {value!r}: use a form like '203.0.113.0/24'") from exc
    if network.version != 4:
        raise errors.InvalidRequestError(f"{value!r}: sandboxes have IPv4 only; give an IPv4 CIDR")
    return str(network)
