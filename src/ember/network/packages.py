"""Where this host's package managers download from, read from their own configuration.

A sandbox's ``packages`` switch lets it reach those hosts, and points the guest's
pip, npm and apt at the same registries, so that ``pip install``, ``npm install``
and ``apt-get install`` work inside wherever they work on the host, through the
same mirror or proxy. Ember names no host itself: pip, apt and npm say where they
go (their configuration, or the tool's own default when nothing is configured);
the guest's Debian mirror is the one its image is built from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
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
# Which of pip's configuration sections wins: its environment variables, then
# the install command's section, then the global one.
_PIP_SECTIONS = (":env:", "install", "global")
_TOOL_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class PackageSources:
    """The registries a guest is pointed at, and every host the host's tools may fetch from."""

    pip_index_url: str | None = None
    pip_extra_index_urls: tuple[str, ...] = ()
    pip_trusted_hosts: tuple[str, ...] = ()
    npm_registry: str | None = None
    debian_mirror: str | None = None
    #: Reached but not configured in the guest: apt's other repositories, pip's
    #: find-links, pip's default index when none is set.
    other_urls: tuple[str, ...] = ()

    def hosts(self) -> tuple[str, ...]:
        """The host names a ``packages`` sandbox may reach."""
        urls = [self.pip_index_url, *self.pip_extra_index_urls, self.npm_registry, self.debian_mirror]
        urls += [f"https://{host}" for host in self.pip_trusted_hosts]
        return tuple(url_hosts([*(url for url in urls if url), *self.other_urls]))


def url_hosts(urls: Iterable[str]) -> list[str]:
    """The host names of the http(s) URLs among ``urls`` (file:// and paths name no host)."""
    hosts = []
    for url in urls:
        try:
            parts = urlsplit(url.strip())
            hostname = parts.hostname
        except ValueError:  # a malformed address ("http://[::1") names no host
            continue
        if parts.scheme in ("http", "https") and hostname:
            hosts.append(hostname.lower())
    return list(dict.fromkeys(hosts))


def pip_settings(config_listing: str) -> dict[str, list[str]]:
    """index-url, extra-index-url, trusted-host and find-links from ``pip config list``
    output, each from the section pip gives precedence to."""
    found: dict[str, dict[str, list[str]]] = {}
    for line in config_listing.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        found.setdefault(name, {})[section] = value.strip().strip("'\"").split()
    settings = {}
    for name in ("index-url", "extra-index-url", "trusted-host", "find-links"):
        sections = found.get(name, {})
        chosen = next((sections[s] for s in _PIP_SECTIONS if s in sections), None)
        if chosen:
            settings[name] = chosen
    return settings


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


def host_package_sources(debian_mirror: str | None) -> PackageSources:
    """This host's registries, now (tools that are missing count for nothing), with the
    guest's Debian mirror."""
    pip: dict[str, list[str]] = {}
    defaults: list[str] = []
    listing = _tool_output([sys.executable, "-m", "pip", "config", "list"])
    if listing is not None:
        pip = pip_settings(listing)
        if "index-url" not in pip:
            defaults = (_tool_output([sys.executable, "-c", _PIP_DEFAULTS]) or "").split()
    index = _web_urls(pip.get("index-url", []))
    return PackageSources(
        pip_index_url=index[0] if index else None,
        pip_extra_index_urls=tuple(_web_urls(pip.get("extra-index-url", []))),
        pip_trusted_hosts=tuple(pip.get("trusted-host", [])),
        npm_registry=_npm_registry(),
        debian_mirror=debian_mirror,
        other_urls=tuple([*apt_urls(), *pip.get("find-links", []), *defaults]),
    )


def _npm_registry() -> str | None:
    npm = shutil.which("npm")
    if npm is not None:
        registry = (_tool_output([npm, "config", "get", "registry"]) or "").strip()
    else:  # without npm here, only its environment variable (spelt in lower case by npm) can name one
        registry = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY", "")  # noqa: SIM112
    return registry if _web_urls([registry]) else None


def _web_urls(urls: Iterable[str]) -> list[str]:
    """The http(s) URLs of ``urls``: a guest cannot use the host's files and paths."""
    return [url for url in urls if url_hosts([url])]


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
