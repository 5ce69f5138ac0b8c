"""The hosts this host's package managers download from, read from their own configuration.

A sandbox's ``packages`` switch lets it reach them, so that ``pip install``,
``apt-get install`` and ``npm install`` work inside wherever they work on the
host. Ember names no host itself: pip, apt and npm say where they go (their
configuration, or the tool's own default when nothing is configured).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

# pip's own default index, asked of pip (its default is written in no config file).
_PIP_DEFAULTS = "\n".join(
    (
        "from pip._internal.models.index import PyPI",
        "print(PyPI.url)",
        "print('https://' + PyPI.file_storage_domain)",
    )
)
_TOOL_TIMEOUT_S = 20.0


def url_hosts(urls: Iterable[str]) -> list[str]:
    """The host names of the http(s) URLs among ``urls`` (file:// and paths name no host)."""
    hosts = []
    for url in urls:
        parts = urlsplit(url.strip())
        if parts.scheme in ("http", "https") and parts.hostname:
            hosts.append(parts.hostname.lower())
    return list(dict.fromkeys(hosts))


def pip_urls(config_listing: str, defaults: str) -> list[str]:
    """Index URLs from ``pip config list`` output; pip's defaults when no index-url is set."""
    urls: list[str] = []
    has_index = False
    for line in config_listing.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "extra-index-url", "find-links", "trusted-host"):
            values = value.strip().strip("'\"").split()
            if name == "trusted-host":
                values = [f"https://{v}" for v in values]
            urls.extend(values)
            has_index = has_index or name == "index-url"
    if not has_index:
        urls.extend(defaults.split())
    return urls


def apt_urls(sources_dir: Path = Path("/etc/apt")) -> list[str]:
    """Repository URIs from sources.list, sources.list.d/*.list and deb822 *.sources files."""
    urls: list[str] = []
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        for line in _lines(path):
            words = line.split()
            if words and words[0] in ("deb", "deb-src"):
                rest = words[1:]
                if rest and rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
                    while rest and not rest[0].endswith("]"):
                        rest = rest[1:]
                    rest = rest[1:]
                urls.extend(rest[:1])
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for line in _lines(path):
            key, _, value = line.partition(":")
            if key.strip().lower() == "uris":
                urls.extend(value.split())
    return urls


def host_package_hosts() -> tuple[str, ...]:
    """Every package-manager host of this machine, now (tools that are missing count for nothing)."""
    urls = apt_urls()
    listing = _tool_output([sys.executable, "-m", "pip", "config", "list"])
    if listing is not None:
        urls += pip_urls(listing, _tool_output([sys.executable, "-c", _PIP_DEFAULTS]) or "")
    npm = shutil.which("npm")
    if npm is not None:
        urls += (_tool_output([npm, "config", "get", "registry"]) or "").split()
    return tuple(url_hosts(urls))


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def _tool_output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
