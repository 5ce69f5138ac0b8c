"""Where the CLI writes: results to stdout, diagnostics and errors to stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ember.errors import EmberError
from ember.protocol.wire import WireModel

Item = TypeVar("Item", bound=WireModel)

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


def print_listing(
    items: Sequence[Item], columns: Sequence[str], row: Callable[[Item], Sequence[str]], as_json: bool = False
) -> None:
    """A listing as a plain table (one row per item) or, with ``--json``, as the items themselves."""
    if as_json:
        stdout.print_json(json.dumps([item.to_wire() for item in items]))
        return
    print_rows(columns, [row(item) for item in items])


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table: a bold header, then the rows."""
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    for cells in rows:
        table.add_row(*cells)
    stdout.print(table)
