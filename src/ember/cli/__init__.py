"""The ``ember`` command line: one typer app, each command group in its own module."""

import typer

from ember.cli.images import image_app

app = typer.Typer(
    name="ember",
    help="Self-hosted microVM sandboxes.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(image_app, name="image")


def main() -> None:
    """Entry point of the ``ember`` console script."""
    app()


__all__ = ["app", "main"]
