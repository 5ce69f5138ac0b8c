"""A live terminal view of a long build: one line per stage, and the latest output line."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ember.images import BuildProgress


class RichBuildProgress(BuildProgress):
    """Shows each stage with its elapsed time and, when its size is known, a bar.

    Use as a context manager: the display runs while the build does and stays on
    screen afterwards as a record of how long each stage took.
    """

    def __init__(self, console: Console) -> None:
        self._stages = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._last_line = Text("", style="dim", no_wrap=True, overflow="ellipsis")
        self._live = Live(Group(self._stages, self._last_line), console=console, refresh_per_second=8)
        self._current: TaskID | None = None

    def __enter__(self) -> RichBuildProgress:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self._finish_current()
        elif self._current is not None:
            self._stages.stop_task(self._current)
        self._last_line.plain = ""
        self._live.stop()

    def stage(self, name: str, total: int | None = None) -> None:
        self._finish_current()
        self._current = self._stages.add_task(name, total=total)
        self._last_line.plain = ""

    def log(self, line: str) -> None:
        self._last_line.plain = line.expandtabs()

    def advance(self, units: int = 1) -> None:
        if self._current is not None:
            self._stages.advance(self._current, units)

    def _finish_current(self) -> None:
        if self._current is None:
            return
        task = self._stages.tasks[self._current]
        # An estimated total may be off either way; a finished stage shows full.
        self._stages.update(self._current, total=task.total or 1, completed=task.total or 1)
        self._stages.stop_task(self._current)
        self._current = None
