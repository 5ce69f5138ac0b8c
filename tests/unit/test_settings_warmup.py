"""EMBER_POOL_WARMUP: what a pooled sandbox runs before it is handed out."""

from __future__ import annotations

import pytest

from ember.settings import Settings, parse_warmup


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("code", ("code",)),
        ("code,command", ("code", "command")),
        (" command , code ,code", ("command", "code")),
        ("none", ()),
        ("", ()),
    ],
)
def test_warmup_lists_parse(text: str, parsed: tuple[str, ...]) -> None:
    assert parse_warmup(text) == parsed


@pytest.mark.parametrize("text", ["cell", "code,none", "code;command", "CODE"])
def test_an_unknown_warmup_is_refused_with_what_is_known(text: str) -> None:
    with pytest.raises(ValueError, match="code and command"):
        parse_warmup(text)


def test_the_default_warms_the_first_cell_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_POOL_WARMUP", raising=False)
    assert Settings.from_env().pool_warmup == ("code",)
    monkeypatch.setenv("EMBER_POOL_WARMUP", "code,command")
    assert Settings.from_env().pool_warmup == ("code", "command")
