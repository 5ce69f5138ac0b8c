"""Where the CLI writes: results to stdout, diagnostics and errors to stderr."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape

from ember.errors import EmberError

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(error: EmberError) -> None:
    """``error: <message> [<code>]`` in red: what happened, and the stable code to search for."""
    stderr.print(f"[red]error: {escape(error.message)} \\[{escape(error.code)}][/]")


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def duration(seconds: float) -> str:
    """A short human duration: 45s, 12m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def age(timestamp: float | None) -> str:
    return "-" if timestamp is None else duration(time.time() - timestamp)
