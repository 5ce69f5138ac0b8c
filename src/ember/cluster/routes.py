"""``GET /v1/cluster``: the cluster as this member sees it (etcd's members, the hosts, their sandboxes)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from ember import errors
from ember.cluster.etcd import EtcdError
from ember.server.deps import require_admin
from ember.server.keys import ApiKey
from ember.server.openapi import ADMIN, AUTH, errors_of

if TYPE_CHECKING:
    from ember.cluster.node import Node

STATUS_TIMEOUT_S = 1.0


class EtcdMember(BaseModel):
    endpoint: str
    healthy: bool
    leader: bool = False
    version: str | None = None
    raft_term: int | None = None
    error: str | None = None


class EtcdStatus(BaseModel):
    members: list[EtcdMember]
    #: Whether etcd took this member's last write in time (no quorum: creates are refused).
    writable: bool


class HostStatus(BaseModel):
    name: str
    address: str
    role: str
    #: "up" (its lease is renewed) or "down" (its lease expired).
    state: str
    #: Seconds left on its lease (up), or since it went (down).
    lease_ttl_s: float | None = None
    down_for_s: float | None = None
    vcpus: int
    memory_mib: int
    free_memory_mib: int
    free_disk_mib: int
    load1: float
    #: Running sandboxes the catalog puts on it, and those lost with it.
    sandboxes: int
    lost: int
    pool: dict[str, int]
    templates: list[str]
    updated_at: float


class ClusterStatus(BaseModel):
    #: The member that answered.
    member: str
    etcd: EtcdStatus
    hosts: list[HostStatus]


def status_routes(node: Node) -> APIRouter:
    router = APIRouter(tags=["cluster"])

    @router.get(
        "/v1/cluster",
        response_model=ClusterStatus,
        responses=errors_of(AUTH, ADMIN, errors.ClusterUnavailableError),
    )
    async def cluster_status(admin: ApiKey = Depends(require_admin)) -> ClusterStatus:
        """The cluster's etcd members, its hosts with their leases, capacity and sandboxes."""
        return await status(node)

    return router


async def status(node: Node) -> ClusterStatus:
    members = await asyncio.gather(*(_member(node, e) for e in node.etcd.endpoints))
    live = {h.name: h for h in node.membership.hosts(role=None)}
    ttls = await asyncio.gather(*(_ttl(node, h.lease) for h in live.values()))
    lease_left = dict(zip(live, ttls, strict=True))
    running: dict[str, int] = {}
    lost: dict[str, int] = {}
    for _, entry in node.catalog.entries():
        counts = running if entry.state == "running" else lost if entry.state == "lost" else None
        if counts is not None:
            counts[entry.host] = counts.get(entry.host, 0) + 1
    names = sorted(set(live) | set(node.membership.down_since) | set(running) | set(lost))
    hosts = []
    now = time.time()
    for name in names:
        record = live.get(name) or node.membership.last_seen.get(name)
        since = node.membership.down_since.get(name)
        hosts.append(
            HostStatus(
                name=name,
                address=record.address if record else "",
                role=record.role if record else "host",
                state="up" if name in live else "down",
                lease_ttl_s=lease_left.get(name),
                down_for_s=now - since if name not in live and since is not None else None,
                vcpus=record.vcpus if record else 0,
                memory_mib=record.memory_mib if record else 0,
                free_memory_mib=record.free_memory_mib if record else 0,
                free_disk_mib=record.free_disk_mib if record else 0,
                load1=record.load1 if record else 0.0,
                sandboxes=running.get(name, 0),
                lost=lost.get(name, 0),
                pool=record.pool if record else {},
                templates=sorted(record.templates) if record else [],
                updated_at=record.updated_at if record else 0.0,
            )
        )
    return ClusterStatus(
        member=node.me,
        etcd=EtcdStatus(members=list(members), writable=node.membership.writable),
        hosts=hosts,
    )


async def _member(node: Node, endpoint: str) -> EtcdMember:
    try:
        answer = await asyncio.wait_for(node.etcd.status(endpoint), STATUS_TIMEOUT_S)
    except (EtcdError, TimeoutError) as exc:
        return EtcdMember(endpoint=endpoint, healthy=False, error=str(exc) or type(exc).__name__)
    member_id = answer.get("header", {}).get("member_id")
    return EtcdMember(
        endpoint=endpoint,
        healthy=True,
        leader=member_id is not None and answer.get("leader") == member_id,
        version=answer.get("version"),
        raft_term=int(answer.get("raftTerm", 0)) or None,
    )


async def _ttl(node: Node, lease: int) -> float | None:
    try:
        left = await asyncio.wait_for(node.etcd.time_to_live(lease), STATUS_TIMEOUT_S)
    except (EtcdError, TimeoutError):
        return None
    return float(left) if left >= 0 else None
