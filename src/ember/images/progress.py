"""How a build reports what it is doing while it runs for minutes."""

from __future__ import annotations


class BuildProgress:
    """Receives a build's stages, output lines and progress; this base ignores them.

    Front ends subclass it (the CLI draws a live display); library callers may
    pass nothing. All calls come from the thread that runs the build, in order.
    """

    def stage(self, name: str, total: int | None = None) -> None:
        """A new step starts; `total` is how many `advance` units it will take, if known."""

    def log(self, line: str) -> None:
        """One line of output from the step's subprocess (also in the build log)."""

    def advance(self, units: int = 1) -> None:
        """The current step made `units` of progress toward its `total`."""
