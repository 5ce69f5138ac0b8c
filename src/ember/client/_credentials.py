"""The API keys of this user's local daemons, kept in a file only the user can read.

``$XDG_CONFIG_HOME/ember/credentials`` (default ``~/.config/ember/credentials``),
mode 0600, JSON ``{"keys": {"http://127.0.0.1:7070": "<key>"}}``. A key is looked
up by the daemon URL it was made for, so a local admin key is never sent to
another daemon that EMBER_URL happens to name.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def credentials_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "ember" / "credentials"


def normalize_url(base_url: str) -> str:
    return base_url.rstrip("/")


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return "ember_" + secrets.token_urlsafe(32)


def load_key(base_url: str) -> str | None:
    """The saved key for the daemon at `base_url`, if this user has one."""
    key = _load().get(normalize_url(base_url))
    return key if isinstance(key, str) and key else None


def save_key(base_url: str, api_key: str) -> Path:
    """Remember `api_key` for `base_url`; the file is replaced atomically and stays 0600."""
    keys = _load()
    keys[normalize_url(base_url)] = api_key
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # The umask can only remove bits; fchmod also fixes a stale temporary file's mode.
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps({"keys": keys}, indent=2).encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _load() -> dict[str, str]:
    try:
        data = json.loads(credentials_path().read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        # A damaged file holds no key we can use; the next save rewrites it whole.
        return {}
    keys = data.get("keys") if isinstance(data, dict) else None
    return dict(keys) if isinstance(keys, dict) else {}
