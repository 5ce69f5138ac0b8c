"""Network policies from API input: what is accepted, what is refused and why, which names pass."""

from __future__ import annotations

import pytest

from ember.errors import InvalidRequestError
from ember.network.policy import DomainRules, NetworkPolicy, parse


def test_default_and_modes() -> None:
    assert parse(None) == NetworkPolicy() and not parse(None).enabled
    assert parse("full") == NetworkPolicy("full")
    assert parse({"mode": "none"}) == NetworkPolicy()


def test_rules_imply_an_allowlist_and_are_normalised() -> None:
    policy = parse(
        {"domains": ["API.Example.com.", "*.example.org", "api.example.com"], "cidrs": ["10.1.2.3/8"]}
    )
    assert policy == NetworkPolicy("allowlist", ("api.example.com", "*.example.org"), ("10.0.0.0/8",))
    assert parse({"packages": True}) == NetworkPolicy("allowlist", packages=True)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (42, "network must be"),
        ({"mode": "sometimes"}, "network.mode"),
        ({"colour": "blue"}, "unknown network field"),
        ({"domains": "example.com"}, "must be a list"),
        ({"domains": ["not a domain"]}, "invalid domain"),
        ({"domains": ["*"]}, "invalid domain"),
        ({"domains": ["localhost"]}, "invalid domain"),
        ({"domains": ["-bad-.example.com"]}, "invalid domain"),
        ({"domains": [7]}, "must be a string"),
        ({"cidrs": ["10.0.0.0/33"]}, "invalid CIDR"),
        ({"cidrs": ["fd00::/8"]}, "IPv4"),
        ({"mode": "full", "domains": ["example.com"]}, "need mode 'allowlist'"),
        ({"mode": "none", "packages": True}, "need mode 'allowlist'"),
        ({"packages": "yes"}, "true or false"),
        ({"domains": [f"h{i}.example.com" for i in range(300)]}, "at most"),
    ],
)
def test_bad_policies_say_what_is_wrong(value: object, says: str) -> None:
    with pytest.raises(InvalidRequestError, match=says):
        parse(value)


def test_domain_rules_match_exact_names_and_wildcard_subdomains() -> None:
    rules = DomainRules.of(parse({"domains": ["api.example.com", "*.example.org"]}))
    assert rules.allows("api.example.com") and rules.allows("API.example.com.")
    assert rules.allows("a.b.example.org") and not rules.allows("example.org")
    assert not rules.allows("example.com") and not rules.allows("evilapi.example.com")
    assert not rules.allows("api.example.com.evil.net")


def test_packages_add_the_hosts_given_only_when_switched_on() -> None:
    hosts = ("pypi.org", "deb.debian.org")
    assert DomainRules.of(parse({"packages": True}), hosts).allows("pypi.org")
    assert not DomainRules.of(parse({"domains": ["a.example.com"]}), hosts).allows("pypi.org")
    assert DomainRules.of(parse("full")).allows("anything.at.all")
