"""``ember network`` and ``ember expose``: a sandbox's network policy and exposed ports, from the shell."""

from __future__ import annotations

from typing import Annotated

import typer

from ember.cli._output import stdout
from ember.client import Sandbox, network_policy

Allow = Annotated[
    list[str],
    typer.Option("--allow", help="A domain (*.example.com for its subdomains) or a CIDR (repeatable)."),
]
Packages = Annotated[
    bool,
    typer.Option(
        "--packages",
        help="Also allow the registries this host's pip, npm and apt use, and use them in the guest.",
    ),
]


def network(
    sandbox_id: Annotated[str, typer.Argument(metavar="SANDBOX_ID")],
    mode: Annotated[
        str | None, typer.Argument(metavar="[MODE]", help="none, full or allowlist (default with --allow).")
    ] = None,
    allow: Allow = [],  # noqa: B006
    packages: Packages = False,
) -> None:
    """Show or change a running sandbox's network policy."""
    with Sandbox.connect(sandbox_id) as sandbox:
        policy = network_policy(mode, allow, packages)
        info = sandbox.info().network if policy is None else sandbox.network.update(**policy)
    rules = [*info.get("domains", []), *info.get("cidrs", [])] + (
        ["packages"] if info.get("packages") else []
    )
    stdout.print(
        f"{info.get('mode', 'none')}  address {info.get('address') or '-'}  {' '.join(rules)}".rstrip()
    )


def expose(
    sandbox_id: Annotated[str, typer.Argument(metavar="SANDBOX_ID")],
    port: Annotated[int, typer.Argument(help="The guest port, 1-65535.")],
    close: Annotated[bool, typer.Option("--close", help="Stop serving the port.")] = False,
) -> None:
    """Serve a guest port through the daemon; prints its URL and access token."""
    with Sandbox.connect(sandbox_id) as sandbox:
        if close:
            sandbox.network.unexpose(port)
            stdout.print(f"closed port {port}")
            return
        exposed = sandbox.expose(port)
    stdout.print(exposed.url)
    stdout.print(f"token {exposed.token}  (header X-Ember-Port-Token, or ?ember_token=)")
