"""``ember keys ...``: API keys of the daemon. Every command needs an admin key.

The key the daemon was started with (EMBER_API_KEY, or the one ``ember serve`` and
the SDK's auto-start save in the credentials file) is an admin key.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ember.cli._output import age, print_listing, stderr, stdout
from ember.client import KeyInfo, Keys

keys_app = typer.Typer(help="API keys (needs an admin key).", no_args_is_help=True)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="What the key is for (shown in `ember keys list`).")],
    admin: Annotated[bool, typer.Option("--admin", help="Let the key manage keys too.")] = False,
) -> None:
    """Create a key and print it; it is shown only this once."""
    with Keys() as keys:
        created = keys.create(name, admin=admin)
    stderr.print(f"created key {created.id} ({created.name}{', admin' if created.admin else ''})")
    stdout.print(created.key)


@keys_app.command("list")
def list_keys() -> None:
    """List keys (never their secrets)."""
    with Keys() as keys:
        found = keys.list()

    def row(key: KeyInfo) -> list[str]:
        revoked = "-" if key.revoked_at is None else age(key.revoked_at) + " ago"
        return [key.id, key.name, "yes" if key.admin else "no", age(key.created_at), revoked]

    print_listing(found, ("ID", "NAME", "ADMIN", "AGE", "REVOKED"), row)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key: it stops working at once."""
    with Keys() as keys:
        keys.revoke(key_id)
    stdout.print(f"revoked {key_id}")
