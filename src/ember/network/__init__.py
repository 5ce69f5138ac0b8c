"""Sandbox networks on the host: policies, namespaces and rules, DNS and the name-checked proxy."""

from ember.network.networks import Lease, Networks, Nic, describe
from ember.network.policy import NetworkPolicy, parse

__all__ = ["Lease", "NetworkPolicy", "Networks", "Nic", "describe", "parse"]
