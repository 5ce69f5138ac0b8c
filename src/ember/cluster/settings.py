"""How a daemon joins a cluster, read from ``ember serve`` options and ``EMBER_CLUSTER*`` variables."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from typing import Literal

from ember.cluster.etcd import TlsFiles

Role = Literal["host", "gateway"]


@dataclass(frozen=True)
class ClusterSettings:
    #: etcd's client URLs, e.g. ``http://10.0.0.1:2379`` (EMBER_CLUSTER, comma-separated).
    endpoints: tuple[str, ...]
    #: Where the other hosts reach this one's API (EMBER_CLUSTER_ADVERTISE).
    advertise: str
    #: This host's name in the cluster, unique (EMBER_CLUSTER_NAME; default: the host name).
    name: str = field(default_factory=socket.gethostname)
    role: Role = "host"
    #: A host whose lease is not renewed for this long leaves placement (EMBER_CLUSTER_LEASE_S).
    lease_s: int = 10
    #: ...and its sandboxes are reported lost this long after that (EMBER_CLUSTER_GRACE_S).
    grace_s: float = 30.0
    #: Placement compares this many hosts, drawn at random among those that fit (best of K).
    choices: int = 2
    #: TLS to etcd (EMBER_ETCD_CA, EMBER_ETCD_CERT, EMBER_ETCD_KEY).
    etcd_tls: TlsFiles | None = None
    #: TLS between hosts: the CA their API certificates are signed by, and this host's client
    #: certificate (EMBER_CLUSTER_CA, EMBER_CLUSTER_CERT, EMBER_CLUSTER_KEY).
    peer_tls: TlsFiles | None = None

    @classmethod
    def from_env(cls, endpoints: str, advertise: str, role: Role = "host") -> ClusterSettings:
        env = os.environ
        urls = tuple(
            u.strip() if "://" in u else f"http://{u.strip()}" for u in endpoints.split(",") if u.strip()
        )
        if not urls:
            raise ValueError("--cluster needs etcd endpoints, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379")
        settings = cls(endpoints=urls, advertise=env.get("EMBER_CLUSTER_ADVERTISE", advertise), role=role)
        if env.get("EMBER_CLUSTER_NAME"):
            settings = replace(settings, name=env["EMBER_CLUSTER_NAME"])
        if "EMBER_CLUSTER_LEASE_S" in env:
            settings = replace(settings, lease_s=max(2, int(env["EMBER_CLUSTER_LEASE_S"])))
        if "EMBER_CLUSTER_GRACE_S" in env:
            settings = replace(settings, grace_s=float(env["EMBER_CLUSTER_GRACE_S"]))
        if "EMBER_CLUSTER_CHOICES" in env:
            settings = replace(settings, choices=max(1, int(env["EMBER_CLUSTER_CHOICES"])))
        return replace(settings, etcd_tls=_tls("EMBER_ETCD"), peer_tls=_tls("EMBER_CLUSTER"))


def _tls(prefix: str) -> TlsFiles | None:
    env = os.environ
    ca = env.get(f"{prefix}_CA")
    return TlsFiles(ca, env.get(f"{prefix}_CERT"), env.get(f"{prefix}_KEY")) if ca else None
