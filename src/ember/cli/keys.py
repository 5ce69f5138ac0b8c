"""``ember keys ...``: API keys of the daemon and their quotas. Every command needs an admin key,
but ``ember keys quota`` showing the calling key's own.

The key the daemon was started with (EMBER_API_KEY, or the one ``ember serve`` and
the SDK's auto-start save in the credentials file) is an admin key.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ember.cli._output import age, print_listing, print_rows, stderr, stdout
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


_LIMIT_HELP = "a number, 'none' (no limit) or 'default' (follow the default)"


def _limit(name: str, text: str, for_default: bool) -> int | str | None:
    """A limit as given on the command line: a number, None (no limit) or 'default'."""
    if text == "none":
        return None
    if text == "default" and not for_default:
        return "default"
    if text.isdigit():
        return int(text)
    allowed = "a number or 'none'" if for_default else _LIMIT_HELP
    raise typer.BadParameter(f"--{name.replace('_', '-')} takes {allowed}, not {text!r}")


@keys_app.command("quota")
def quota(
    key_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="The key (default: the calling key's own).")
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="Show or set the default limits.")] = False,
    sandboxes: Annotated[str | None, typer.Option(help=f"Running sandboxes: {_LIMIT_HELP}.")] = None,
    vcpus: Annotated[str | None, typer.Option(help="vCPUs of running sandboxes.")] = None,
    memory_mb: Annotated[str | None, typer.Option(help="MiB of memory of running sandboxes.")] = None,
    lifetime_s: Annotated[str | None, typer.Option(help="Seconds a sandbox may live.")] = None,
    snapshots: Annotated[str | None, typer.Option(help="Snapshots kept.")] = None,
    snapshot_bytes: Annotated[str | None, typer.Option(help="Bytes of snapshots kept.")] = None,
) -> None:
    """Show a key's limits and use, or change them (needs an admin key, but to show your own)."""
    given = {
        "sandboxes": sandboxes,
        "vcpus": vcpus,
        "memory_mb": memory_mb,
        "lifetime_s": lifetime_s,
        "snapshots": snapshots,
        "snapshot_bytes": snapshot_bytes,
    }
    changes = {name: _limit(name, text, default) for name, text in given.items() if text is not None}
    if default and key_id is not None:
        raise typer.BadParameter("give a key ID or --default, not both")
    with Keys() as keys:
        if default:
            limits = keys.default_quota()
            if changes:
                limits = keys.set_default_quota({**limits, **changes})  # type: ignore[dict-item]
            for name, limit in limits.items():
                stdout.print(f"{name:<15} {'none' if limit is None else limit}")
            return
        if changes:
            if key_id is None:
                raise typer.BadParameter("name the key to change (ember keys list shows the ids)")
            own = {**keys.quota(key_id).own, **changes}
            keys.set_quota(key_id, {k: v for k, v in own.items() if v != "default"})  # type: ignore[misc]
        info = keys.quota(key_id)
    usage = info.usage.to_wire()
    stdout.print(f"key {info.key_id}")
    table = [
        [
            name,
            "none" if limit is None else str(limit),
            "default"
            if name not in info.own
            else ("none" if info.own[name] is None else str(info.own[name])),
            str(usage.get(name, "-")),
        ]
        for name, limit in info.limits.items()
    ]
    print_rows(("LIMIT", "IN FORCE", "OWN", "USED"), table)
