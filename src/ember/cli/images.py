"""``ember image ...``: build and show the guest artifacts."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

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
    except KeyboardInterrupt as exc:
        console.print("interrupted: nothing half-built was published")
        raise typer.Exit(130) from exc
    # Whole paths on their own lines, never shortened: they get copied into commands.
    console.print(f"kernel {images.kernel}", soft_wrap=True, highlight=False)
    console.print(f"rootfs {images.rootfs}", soft_wrap=True, highlight=False)
