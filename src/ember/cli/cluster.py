"""``ember cluster status``: the cluster's etcd members and hosts, as the daemon you reach sees them."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ember.cli._output import duration, stdout
from ember.client import Cluster

cluster_app = typer.Typer(help="A cluster of hosts (ember serve --cluster).", no_args_is_help=True)


@cluster_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Hosts (lease, capacity, sandboxes) and etcd members; needs an admin key."""
    with Cluster() as cluster:
        found = cluster.status()
    if as_json:
        stdout.print_json(json.dumps(found))
        return
    etcd = found["etcd"]
    quorum = "takes writes" if etcd["writable"] else "NO QUORUM: creates are refused, sandboxes keep serving"
    stdout.print(f"member {found['member']}; etcd {quorum}")
    members = Table(box=None, header_style="bold")
    for column in ("ETCD MEMBER", "HEALTHY", "LEADER", "VERSION"):
        members.add_column(column)
    for member in etcd["members"]:
        health = "yes" if member["healthy"] else f"no ({member.get('error') or '-'})"[:60]
        members.add_row(
            member["endpoint"], health, "*" if member["leader"] else "", member.get("version") or "-"
        )
    stdout.print(members)
    hosts = Table(box=None, header_style="bold")
    for column in (
        "HOST",
        "ROLE",
        "STATE",
        "LEASE",
        "SANDBOXES",
        "LOST",
        "FREE MEM",
        "LOAD",
        "TEMPLATES",
        "ADDRESS",
    ):
        hosts.add_column(column)
    for host in found["hosts"]:
        hosts.add_row(*_host_row(host))
    stdout.print(hosts)


def _host_row(host: dict[str, Any]) -> list[str]:
    if host["state"] == "up":
        lease = f"{host['lease_ttl_s']:.0f}s left" if host.get("lease_ttl_s") is not None else "?"
    else:
        lease = f"gone {duration(host['down_for_s'])}" if host.get("down_for_s") is not None else "gone"
    return [
        host["name"],
        host["role"],
        host["state"],
        lease,
        str(host["sandboxes"]),
        str(host["lost"]),
        f"{host['free_memory_mib']} MiB" if host["role"] == "host" else "-",
        f"{host['load1']:.2f}",
        ",".join(host["templates"]) or "-",
        host["address"],
    ]
