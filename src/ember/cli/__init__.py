"""The ``ember`` command line: one typer app, each command group in its own module.

Sandbox commands talk to the daemon through the SDK (``ember.client``), so they
honour EMBER_URL / EMBER_API_KEY and start a local daemon when none is configured.
An ``EmberError`` ends a command with ``error: <message> [<code>]`` and status 1.

A command's module (and what it needs: the SDK, the benchmark suite, the
server) is imported only when that command runs: importing every one up front
cost ``ember execute`` half a second before it sent a byte.
"""

import importlib
import signal
import sys

import typer

from ember.errors import EmberError

#: Command name -> (module, attribute); a ``typer.Typer`` attribute is a group of subcommands.
COMMANDS = {
    "serve": ("ember.cli.serve", "serve"),
    "create": ("ember.cli.sandboxes", "create"),
    "execute": ("ember.cli.execute", "execute"),
    "run": ("ember.cli.execute", "run"),
    "ls": ("ember.cli.sandboxes", "ls"),
    "kill": ("ember.cli.sandboxes", "kill"),
    "shell": ("ember.cli.shell", "shell"),
    "upload": ("ember.cli.sandboxes", "upload"),
    "download": ("ember.cli.sandboxes", "download"),
    "fork": ("ember.cli.snapshots", "fork"),
    "network": ("ember.cli.network", "network"),
    "expose": ("ember.cli.network", "expose"),
    "pool": ("ember.cli.snapshots", "pool"),
    "bench": ("ember.cli.bench", "bench"),
    "mcp": ("ember.cli.mcp", "mcp"),
    "e2b-env": ("ember.cli.e2b", "e2b_env"),
    "cluster": ("ember.cli.cluster", "cluster_app"),
    "image": ("ember.cli.images", "image_app"),
    "keys": ("ember.cli.keys", "keys_app"),
    "snapshot": ("ember.cli.snapshots", "snapshot_app"),
    "template": ("ember.cli.snapshots", "template_app"),
}


def build_app(only: str | None = None) -> typer.Typer:
    """The app with every command, or with command ``only`` alone (what one run needs)."""
    app = typer.Typer(name="ember", no_args_is_help=True, add_completion=False)

    @app.callback()
    def ember() -> None:
        """Self-hosted microVM sandboxes."""

    for name, (module, attribute) in COMMANDS.items():
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def _command_name(argv: list[str]) -> str | None:
    """The command this run names, when it names a known one (else every command is loaded:
    for the help, or to say which commands there are)."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the ``ember`` console script."""
    # SIGTERM unwinds like Ctrl-C, so that sandboxes a command made are killed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        build_app(_command_name(sys.argv[1:]))()
    except EmberError as exc:
        from ember.cli._output import print_error

        print_error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["COMMANDS", "build_app", "main"]
