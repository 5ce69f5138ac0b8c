"""The ``ember`` command line: one typer app, each command group in its own module.

Sandbox commands talk to the daemon through the SDK (``ember.client``), so they
honour EMBER_URL / EMBER_API_KEY and start a local daemon when none is configured.
An ``EmberError`` ends a command with ``error: <message> [<code>]`` and status 1.
"""

import signal
import sys

import typer

from ember.cli._output import print_error
from ember.cli.bench import bench
from ember.cli.e2b import e2b_env
from ember.cli.execute import execute, run
from ember.cli.images import image_app
from ember.cli.keys import keys_app
from ember.cli.mcp import mcp
from ember.cli.network import expose, network
from ember.cli.sandboxes import create, download, kill, ls, upload
from ember.cli.serve import serve
from ember.cli.shell import shell
from ember.cli.snapshots import fork, pool, snapshot_app, template_app
from ember.errors import EmberError

app = typer.Typer(
    name="ember",
    help="Self-hosted microVM sandboxes.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(serve)
app.command()(create)
app.command()(execute)
app.command()(run)
app.command()(ls)
app.command()(kill)
app.command()(shell)
app.command()(upload)
app.command()(download)
app.command()(fork)
app.command()(network)
app.command()(expose)
app.command()(pool)
app.command()(bench)
app.command()(mcp)
app.command("e2b-env")(e2b_env)
app.add_typer(image_app, name="image")
app.add_typer(keys_app, name="keys")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(template_app, name="template")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the ``ember`` console script."""
    # SIGTERM unwinds like Ctrl-C, so that sandboxes a command made are killed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except EmberError as exc:
        print_error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
