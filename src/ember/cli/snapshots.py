"""``ember snapshot``, ``ember fork``, ``ember template``, ``ember pool``: freeze, copy, name, keep ready."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from ember.cli._output import age, print_listing, stderr, stdout, write_stdout
from ember.client import PoolInfo, Sandbox, SnapshotInfo, Step, build_template
from ember.errors import InvalidRequestError

snapshot_app = typer.Typer(help="Snapshots of running sandboxes.", no_args_is_help=True)
template_app = typer.Typer(help="Templates: named snapshots that sandboxes start from.", no_args_is_help=True)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@snapshot_app.command("create")
def snapshot_create(sandbox_id: Annotated[str, typer.Argument(metavar="SANDBOX_ID")]) -> None:
    """Snapshot a running sandbox (it runs on) and print the snapshot's id."""
    with Sandbox.connect(sandbox_id) as sandbox:
        info = sandbox.snapshot()
    stdout.print(info.id)


@snapshot_app.command("ls")
def snapshot_ls(as_json: AsJson = False) -> None:
    """List your snapshots."""
    _print_snapshots(Sandbox.list_snapshots(), as_json)


@snapshot_app.command("rm")
def snapshot_rm(snapshot_ids: Annotated[list[str], typer.Argument(metavar="ID...")]) -> None:
    """Delete snapshots (sandboxes restored from them keep running)."""
    for snapshot_id in snapshot_ids:
        Sandbox.delete_snapshot(snapshot_id)
        stdout.print(f"deleted {snapshot_id}")


def fork(
    sandbox_id: Annotated[str, typer.Argument(metavar="SANDBOX_ID")],
    count: Annotated[int, typer.Option("-n", "--count", help="How many copies.")] = 1,
) -> None:
    """Copy a running sandbox N times (REPL, processes, files); print the new ids."""
    with Sandbox.connect(sandbox_id) as sandbox:
        forks = sandbox.fork(count)
    for copy in forks:
        stdout.print(copy.id)


@template_app.command("build")
def template_build(
    name: Annotated[str, typer.Argument(help="The template's name, e.g. data.")],
    base: Annotated[
        str | None, typer.Option("--from", help="Start from this template (default: boot).")
    ] = None,
    from_oci: Annotated[
        str | None,
        typer.Option(
            "--from-oci",
            metavar="REF",
            help="Start from an OCI image: HOST[:PORT]/REPO[:TAG], or a layout directory or "
            "archive (OCI or docker save) on the daemon's host.",
        ),
    ] = None,
    registry_user: Annotated[
        str | None,
        typer.Option(
            "--registry-user",
            help="For --from-oci: the registry's user (password: $EMBER_REGISTRY_PASSWORD).",
        ),
    ] = None,
    run: Annotated[list[str], typer.Option("--run", help="A shell command to run (repeatable).")] = [],  # noqa: B006
    copy: Annotated[
        list[str], typer.Option("--copy", help="LOCAL:REMOTE, copied before the commands run (repeatable).")
    ] = [],  # noqa: B006
    code: Annotated[
        list[str], typer.Option("--code", help="Python for the REPL, after the commands (repeatable).")
    ] = [],  # noqa: B006
    env: Annotated[list[str], typer.Option("--env", help="K=V for the sandbox (repeatable).")] = [],  # noqa: B006
    memory_mb: Annotated[int, typer.Option("--memory", help="MiB of memory.")] = 512,
    vcpus: Annotated[int, typer.Option("--vcpus")] = 2,
) -> None:
    """Boot a sandbox (or an OCI image), copy files in, run the commands and code (output streamed),
    save it as NAME."""
    steps = [Step(copy=_pair(item, ":", "--copy")) for item in copy] + [Step(run=command) for command in run]
    steps += [Step(code=cell) for cell in code]
    variables = dict(_pair(item, "=", "--env") for item in env)
    registry_auth = None
    if registry_user is not None:
        registry_auth = (registry_user, os.environ.get("EMBER_REGISTRY_PASSWORD", ""))
    started = time.monotonic()
    if from_oci is not None:
        from_oci = _local_path(from_oci)
    info = build_template(
        name,
        steps,
        base=base,
        env=variables,
        vcpus=vcpus,
        memory_mb=memory_mb,
        on_output=write_stdout,
        on_step=lambda text: stderr.print(
            f"[bold]==> {text}[/] [dim]({time.monotonic() - started:.1f} s)[/]"
        ),
        from_oci=from_oci,
        registry_auth=registry_auth,
    )
    stderr.print(f"template {info.name} saved ({info.size_bytes / 2**20:.0f} MiB on disk)")
    if info.image is not None:
        command = " ".join(info.image.default_command) or "-"
        stderr.print(
            f"image {info.image.digest[:19]}: user {info.image.user or 'root'}, "
            f"workdir {info.image.workdir}, default command: {command}"
        )


@template_app.command("ls")
def template_ls(as_json: AsJson = False) -> None:
    """List the templates."""
    _print_snapshots(Sandbox.list_templates(), as_json)


@template_app.command("rm")
def template_rm(names: Annotated[list[str], typer.Argument(metavar="NAME...")]) -> None:
    """Delete templates (admin key; sandboxes started from them keep running)."""
    for name in names:
        Sandbox.delete_template(name)
        stdout.print(f"deleted {name}")


def _local_path(reference: str) -> str:
    """A layout or archive here named absolutely (``PATH[:TAG]``), for a daemon with another cwd."""
    head, colon, tag = reference.rpartition(":")
    if Path(reference).exists():
        return str(Path(reference).resolve())
    if colon and head and Path(head).exists():
        return f"{Path(head).resolve()}:{tag}"
    return reference


def _pair(text: str, separator: str, option: str) -> tuple[str, str]:
    first, found, second = text.partition(separator)
    if not found or not first or not second:
        raise InvalidRequestError(f"{option} {text!r} must look like A{separator}B")
    if option == "--copy" and not Path(first).exists():
        raise InvalidRequestError(f"--copy {text!r}: {first} does not exist")
    return first, second


def _print_snapshots(snapshots: list[SnapshotInfo], as_json: bool) -> None:
    def row(info: SnapshotInfo) -> list[str]:
        shape = [str(info.vcpus), f"{info.memory_mb} MiB", f"{info.size_bytes / 2**20:.0f} MiB"]
        return [info.id, info.name or "-", info.source_sandbox or "-", *shape, age(info.created_at)]

    columns = ("ID", "NAME", "FROM SANDBOX", "VCPUS", "MEMORY", "SIZE", "AGE")
    print_listing(snapshots, columns, row, as_json)


def pool(as_json: AsJson = False) -> None:
    """Show the warm pools: per template, sandboxes kept ready, hits, misses, refill time."""

    def row(info: PoolInfo) -> list[str]:
        p50 = f"{info.refill_p50_s * 1000:.0f} ms" if info.refill_p50_s is not None else "-"
        counts = (info.ready, info.target, info.hits, info.misses)
        return [info.template, *map(str, counts), p50, str(info.failures)]

    columns = ("TEMPLATE", "READY", "TARGET", "HITS", "MISSES", "REFILL P50", "FAILURES")
    print_listing(Sandbox.pool_stats(), columns, row, as_json)
