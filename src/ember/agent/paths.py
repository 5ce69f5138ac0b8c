"""Where the agent works and keeps its own state; overridable to run it outside a VM in tests."""

from __future__ import annotations

import os
from pathlib import Path

from ember.agent.image import IMAGE
from ember.protocol.messages import DEFAULT_WORKDIR

WORKDIR = os.environ.get("EMBER_AGENT_WORKDIR") or IMAGE.workdir or DEFAULT_WORKDIR
STATE_DIR = Path(os.environ.get("EMBER_AGENT_STATE_DIR", "/run/ember"))


def as_text(os_path: str) -> str:
    """A path from the OS as text the host can be sent: bytes of a name that are not UTF-8
    (which Python decodes to lone surrogates, and JSON's UTF-8 cannot carry) become U+FFFD."""
    if os_path.isascii():
        return os_path
    return os_path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
