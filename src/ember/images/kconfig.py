"""Kconfig files as data: what a config fragment asks for and whether a .config has it.

Kconfig silently drops an option whose dependencies are not met, so a fragment
is only a wish until the final .config is checked against it.
"""

from __future__ import annotations

import re

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")
NOT_SET = "n"


def parse_kconfig(text: str) -> dict[str, str]:
    """Options of a .config or fragment, `NOT_SET` for ``# CONFIG_X is not set`` lines."""
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SET.match(line):
            options[match[1]] = match[2]
        elif match := _UNSET.match(line):
            options[match[1]] = NOT_SET
    return options


def unmet_options(fragment: str, config: str) -> list[str]:
    """Lines describing each fragment option the final .config does not have as asked.

    An option absent from .config counts as not set: Kconfig omits symbols whose
    dependencies are unmet.
    """
    wanted = parse_kconfig(fragment)
    actual = parse_kconfig(config)
    unmet = []
    for option, value in wanted.items():
        got = actual.get(option, NOT_SET)
        if got != value:
            shown = "not set" if got == NOT_SET else got
            unmet.append(f"{option}: wanted {value}, got {shown}")
    return unmet
