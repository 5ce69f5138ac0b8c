"""Small pure helpers of the CLI."""

from __future__ import annotations

import pytest
import typer

from ember.cli._output import duration
from ember.cli.sandboxes import _split_remote


@pytest.mark.parametrize(
    ("seconds", "text"), [(-3, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (3 * 86400, "3d")]
)
def test_durations_are_short(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_remote_paths_are_sandbox_colon_path() -> None:
    assert _split_remote("abc:/app/x.txt") == ("abc", "/app/x.txt")
    assert _split_remote("abc:") == ("abc", "")
    assert _split_remote("abc:C:/odd") == ("abc", "C:/odd")


@pytest.mark.parametrize("spec", ["no-colon", ":/app/x"])
def test_remote_path_without_a_sandbox_is_refused(spec: str) -> None:
    with pytest.raises(typer.BadParameter):
        _split_remote(spec)
