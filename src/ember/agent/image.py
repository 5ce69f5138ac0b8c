"""What the sandbox's image says about how its processes run: environment, directory, user, shell.

Ember's own image says nothing (root, /app, bash). An image imported from OCI
carries its config's ``Env``, ``WorkingDir`` and ``User`` in a JSON file that
its init names in ``EMBER_AGENT_IMAGE`` (``ember.images.oci``), and may have no
bash, or no shell at all: commands then run under its ``/bin/sh``, else under the
agent's own (``EMBER_AGENT_SHELL``, a static busybox).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

_SHELLS = ("/bin/bash", "/bin/sh")


@dataclass(frozen=True)
class ImageDefaults:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None


def load(path: str | None) -> ImageDefaults:
    """The defaults in the file at `path` (none: Ember's own image)."""
    if not path:
        return ImageDefaults()
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    env = data.get("env") or {}
    return ImageDefaults(
        env={str(k): str(v) for k, v in env.items()},
        workdir=data.get("workdir") or None,
        user=data.get("user") or None,
    )


def shell() -> str:
    """The shell that runs command strings: the image's bash, else its sh, else the agent's own."""
    for candidate in _SHELLS:
        if os.access(candidate, os.X_OK):
            return candidate
    return os.environ.get("EMBER_AGENT_SHELL") or _SHELLS[0]


IMAGE = load(os.environ.get("EMBER_AGENT_IMAGE"))
