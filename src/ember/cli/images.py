"""``ember image ...``: build and show the guest artifacts."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ember.cli._build_progress import RichBuildProgress
from ember.images import ImagesError, ensure_guest_images
from ember.settings import Settings

image_app = typer.Typer(help="Guest kernel and root filesystem.", no_args_is_help=True)


@image_app.command("build")
def build(
    force: bool = typer.Option(
        False, "--force", help="Rebuild everything, debootstrap included, ignoring the cache."
    ),
) -> None:
    """Build the guest kernel and base root filesystem (a no-op when they are current)."""
    settings = Settings.from_env()
    console = Console()
    try:
        with RichBuildProgress(console) as progress:
            images = ensure_guest_images(settings, progress, force=force)
    except ImagesError as exc:
        console.print(f"[bold red]image build failed:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    table = Table(show_header=False, box=None)
    table.add_row("kernel", str(images.kernel), images.kernel_id)
    table.add_row("rootfs", str(images.rootfs), images.rootfs_id)
    console.print(table)
