"""``ember image ...``: build and show the guest artifacts."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from ember.cli._build_progress import RichBuildProgress
from ember.images import ImagesError, ensure_guest_images
from ember.settings import Settings

if TYPE_CHECKING:
    from ember.engine.store import SnapshotRecord

image_app = typer.Typer(help="Guest kernel and root filesystem.", no_args_is_help=True)


@image_app.command("build")
def build(
    force: bool = typer.Option(
        False, "--force", help="Rebuild everything, debootstrap included, ignoring the cache."
    ),
    base_template: bool = typer.Option(
        True, "--base-template/--no-base-template", help="Also make template base (sandboxes start from it)."
    ),
) -> None:
    """Build the guest kernel, the base root filesystem and template base (no-ops when current)."""
    settings = Settings.from_env()
    console = Console()
    try:
        with RichBuildProgress(console) as progress:
            images = ensure_guest_images(settings, progress, force=force)
    except ImagesError as exc:
        console.print(f"[bold red]image build failed:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        console.print("interrupted: nothing half-built was published")
        raise typer.Exit(130) from exc
    # Whole paths on their own lines, never shortened: they get copied into commands.
    console.print(f"kernel {images.kernel}", soft_wrap=True, highlight=False)
    console.print(f"rootfs {images.rootfs}", soft_wrap=True, highlight=False)
    if base_template:
        with console.status("template base: booting a sandbox and snapshotting it"):
            template = asyncio.run(_ensure_base_template(settings))
        console.print(f"template base {template.id}", highlight=False)


async def _ensure_base_template(settings: Settings) -> SnapshotRecord:
    # The engine directly, without a daemon: only this one sandbox is touched. Imported
    # here so that every other ``ember`` command starts without loading the engine.
    from ember.engine import SandboxManager

    manager = SandboxManager(settings)
    try:
        return await manager.ensure_base_template()
    finally:
        await manager.close()
