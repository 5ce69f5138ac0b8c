"""Where the CLI writes: results to stdout, diagnostics and errors to stderr.

The rich consoles ``stdout`` and ``stderr`` are made on first use: importing rich
costs ~35 ms, which ``ember execute`` (plain writes, and colour only for an error)
does not pay.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ember.errors import EmberError
from ember.protocol.wire import WireModel

if TYPE_CHECKING:
    from rich.console import Console

    stdout: Console
    stderr: Console

Item = TypeVar("Item", bound=WireModel)


def __getattr__(name: str) -> Console:
    if name in ("stdout", "stderr"):
        return _console(name == "stderr")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _console(to_stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=to_stderr, highlight=False, soft_wrap=True)


def print_error(error: EmberError) -> None:
    """``error: <message> [<code>]`` in red: what happened, and the stable code to search for."""
    from rich.markup import escape

    _console(True).print(f"[red]error: {escape(error.message)} \\[{escape(error.code)}][/]")


def print_failure(message: str) -> None:
    """``error: <message>`` in red, for a failure that is not an EmberError (no code)."""
    from rich.markup import escape

    _console(True).print(f"[red]error: {escape(message)}[/]")


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
        _console(False).print_json(json.dumps([item.to_wire() for item in items]))
        return
    print_rows(columns, [row(item) for item in items])


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table: a bold header, then the rows."""
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    for cells in rows:
        table.add_row(*cells)
    _console(False).print(table)
