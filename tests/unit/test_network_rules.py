"""The namespace's nftables rules for each policy, checked as text and by nft itself."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from ember.network.host import ALWAYS_DENIED, Addressing, ServicePorts, ruleset
from ember.network.policy import parse

SLOT = Addressing(3, ipaddress.IPv4Network("100.96.0.0/12"))
PORTS = ServicePorts(dns=40001, http=40002, tls=40003)
DENIED = [*ALWAYS_DENIED, "100.96.0.0/12", "192.0.2.2"]


def test_addresses_of_a_slot() -> None:
    assert (SLOT.host_ip, SLOT.uplink_ip) == ("100.96.0.25", "100.96.0.26")
    assert (SLOT.gateway, SLOT.guest_ip, SLOT.guest_net) == ("100.96.0.29", "100.96.0.30", "100.96.0.28/30")
    assert (SLOT.host_link, SLOT.tap) == ("ev3", "et3")


def test_every_policy_sends_dns_to_the_resolver_and_refuses_denied_addresses() -> None:
    for policy in ("full", {"domains": ["a.example.com"], "cidrs": ["203.0.113.0/24"]}):
        rules = ruleset(SLOT, parse(policy), PORTS, DENIED)
        assert 'iifname "et3" ip daddr 100.96.0.29 udp dport 53 dnat to 100.96.0.25:40001' in rules
        assert "192.0.2.2" in rules and "169.254.0.0/16" in rules
        # Denied addresses are refused before anything the policy lets through.
        first_accept = rules.index(
            'iifname "et3" ip daddr @allowed accept' if policy != "full" else 'iifname "et3" accept'
        )
        assert rules.index("ip daddr @denied reject") < first_accept


def test_full_accepts_the_rest_and_proxies_nothing() -> None:
    rules = ruleset(SLOT, parse("full"), PORTS, DENIED)
    assert 'iifname "et3" accept' in rules
    assert "40002" not in rules.split("chain forward")[0]


def test_allowlist_proxies_web_traffic_except_to_allowed_cidrs() -> None:
    rules = ruleset(SLOT, parse({"domains": ["a.example.com"], "cidrs": ["203.0.113.0/24"]}), PORTS, DENIED)
    assert "ip daddr != @allowed tcp dport 443 dnat to 100.96.0.25:40003" in rules
    assert 'iifname "et3" ip daddr @allowed accept' in rules
    assert 'iifname "et3" accept' not in rules
    domains_only = ruleset(SLOT, parse({"domains": ["a.example.com"]}), PORTS, DENIED)
    assert "set allowed" not in domains_only and 'iifname "et3" tcp dport 80 dnat' in domains_only


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables")
@pytest.mark.parametrize("policy", ["full", {"domains": ["a.example.com"], "cidrs": ["203.0.113.0/24"]}])
def test_nft_accepts_the_rules(policy: object) -> None:
    checked = subprocess.run(
        ["nft", "--check", "-f", "-"], input=ruleset(SLOT, parse(policy), PORTS, DENIED), text=True,
        capture_output=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
