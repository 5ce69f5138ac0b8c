"""``ember ls``, ``ember kill``, ``ember upload``, ``ember download``: sandboxes from the shell.

Files are named ``SANDBOX_ID:PATH`` on the sandbox side, as with scp;
``SANDBOX_ID:`` alone means /app/<the local file's name>.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from ember.cli._output import age, duration, print_error, print_listing, stderr, stdout
from ember.cli.network import Allow, Packages
from ember.client import Sandbox, SandboxInfo, network_policy
from ember.errors import EmberError


def create(
    template: Annotated[str | None, typer.Option("--template", help="Start from this template.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", "-t", help="Lifetime in seconds.")] = 3600,
    network: Annotated[
        str | None, typer.Option("--network", help="none, full or allowlist (default with --allow).")
    ] = None,
    allow: Allow = [],  # noqa: B006
    packages: Packages = False,
) -> None:
    """Start a sandbox that keeps running; print its id."""
    sandbox = Sandbox(template=template, timeout=timeout, network=network_policy(network, allow, packages))
    sandbox.detach()
    stdout.print(sandbox.id)
    sandbox.close()


def ls(
    all: Annotated[bool, typer.Option("--all", "-a", help="Include ended sandboxes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List your sandboxes."""

    def row(info: SandboxInfo) -> list[str]:
        cells = [info.id, info.state, str(info.vcpus), f"{info.memory_mb} MiB"]
        return cells + [age(info.created_at), _expires(info)] + ([info.end_reason or "-"] if all else [])

    columns = ("ID", "STATE", "VCPUS", "MEMORY", "AGE", "EXPIRES") + (("END REASON",) if all else ())
    print_listing(Sandbox.list(all=all), columns, row, as_json)


def _expires(info: SandboxInfo) -> str:
    if info.ended_at is not None or info.expires_at is None:
        return "-"
    return "in " + duration(info.expires_at - time.time())


def kill(
    sandbox_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sandboxes to kill.")],
) -> None:
    """Kill sandboxes now."""
    failed = False
    for sandbox_id in sandbox_ids:
        try:
            with Sandbox.connect(sandbox_id) as sandbox:
                sandbox.kill()
        except EmberError as exc:
            print_error(exc)
            failed = True
        else:
            stdout.print(f"killed {sandbox_id}")
    if failed:
        raise typer.Exit(1)


def upload(
    local: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Local file.")],
    target: Annotated[str, typer.Argument(metavar="SANDBOX:PATH", help="Where it goes in the sandbox.")],
) -> None:
    """Copy a local file into a sandbox (streamed: any size)."""
    sandbox_id, path = _split_remote(target)
    with Sandbox.connect(sandbox_id) as sandbox:
        info = sandbox.files.upload_file(local, path or f"/app/{local.name}")
    stderr.print(f"{local} -> {sandbox_id}:{info.path} ({info.size} bytes)")


def download(
    source: Annotated[str, typer.Argument(metavar="SANDBOX:PATH", help="A file in the sandbox.")],
    local: Annotated[Path, typer.Argument(help="Local file or directory.")],
) -> None:
    """Copy a file out of a sandbox (streamed: any size)."""
    sandbox_id, path = _split_remote(source)
    if not path:
        raise typer.BadParameter("name the file to download: SANDBOX:PATH", param_hint="SANDBOX:PATH")
    target = local / PurePosixPath(path).name if local.is_dir() else local
    with Sandbox.connect(sandbox_id) as sandbox:
        sandbox.files.download_file(path, target)
    stderr.print(f"{sandbox_id}:{path} -> {target} ({target.stat().st_size} bytes)")


def _split_remote(spec: str) -> tuple[str, str]:
    sandbox_id, colon, path = spec.partition(":")
    if not colon or not sandbox_id:
        raise typer.BadParameter(f"{spec!r} is not SANDBOX_ID:PATH", param_hint="SANDBOX:PATH")
    return sandbox_id, path
