"""The guest's package registries: pip, npm and apt pointed at the host's own.

When a sandbox's network has the ``packages`` switch, the host says where its
own package managers download from (a mirror, a proxy, a private index), and the
guest's are pointed there through files Ember owns: pip's ``/etc/xdg/pip/pip.conf``
(pip reads it before ``/etc/pip.conf``, which names no index in Ember's base),
the ``registry`` line of npm's global ``/etc/npmrc``, and the URIs of Ember's apt
source. A field left empty gives the tool back its own default; a guest without
Ember's apt source (an imported image) keeps its own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from ember.agent._errors import AgentError
from ember.protocol.codes import ErrorCode
from ember.protocol.messages import PackageRegistries

PIP_CONF = "etc/xdg/pip/pip.conf"
NPM_RC = "etc/npmrc"
#: Written by the image builder (ember.images.debian_tree).
APT_SOURCES = "etc/apt/sources.list.d/ember.sources"
_NPM_REGISTRY_LINE = re.compile(r"\s*registry\s*=")

#: What was last applied: part of the guest's memory, so a restored guest skips a repeat.
_applied: PackageRegistries | None = None


def changes(registries: PackageRegistries) -> bool:
    return registries != _applied


def configure(registries: PackageRegistries, root: Path = Path("/")) -> None:
    """Point pip, npm and apt under ``root`` at ``registries``; nothing is written if one is invalid."""
    global _applied
    _check(registries)
    _write_pip(root / PIP_CONF, registries)
    _write_npm(root / NPM_RC, registries.npm_registry)
    if registries.debian_mirror is not None:
        _write_apt(root / APT_SOURCES, registries.debian_mirror)
    _applied = registries


def _check(registries: PackageRegistries) -> None:
    urls = [registries.pip_index_url, *registries.pip_extra_index_urls]
    urls += [registries.npm_registry, registries.debian_mirror]
    for url in urls:
        if url is not None and not _valid_url(url):
            raise AgentError(ErrorCode.INVALID_REQUEST, f"invalid registry URL {url!r}")
    for host in registries.pip_trusted_hosts:
        if not _one_word(host):
            raise AgentError(ErrorCode.INVALID_REQUEST, f"invalid trusted host {host!r}")


def _one_word(value: str) -> bool:
    # Each value goes into one line of a configuration file: nothing else may ride along.
    return bool(value) and value.isprintable() and not any(c.isspace() for c in value)


def _valid_url(url: str) -> bool:
    if not _one_word(url):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _write_pip(path: Path, registries: PackageRegistries) -> None:
    settings = [
        ("index-url", registries.pip_index_url or ""),
        ("extra-index-url", " ".join(registries.pip_extra_index_urls)),
        ("trusted-host", " ".join(registries.pip_trusted_hosts)),
    ]
    lines = [f"{name} = {value}" for name, value in settings if value]
    if lines:
        _replace(path, "\n".join(["[global]", *lines, ""]))
    else:
        path.unlink(missing_ok=True)


def _write_npm(path: Path, registry: str | None) -> None:
    """Only the registry line: the rest of the file is the user's."""
    try:
        kept = [line for line in path.read_text().splitlines() if not _NPM_REGISTRY_LINE.match(line)]
    except FileNotFoundError:
        kept = []
    if registry is not None:
        kept.append(f"registry={registry}")
    if kept:
        _replace(path, "\n".join([*kept, ""]))
    else:
        path.unlink(missing_ok=True)


def _write_apt(path: Path, mirror: str) -> None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    lines = [f"URIs: {mirror}" if line.startswith("URIs:") else line for line in lines]
    _replace(path, "\n".join([*lines, ""]))


def _replace(path: Path, text: str) -> None:
    """Write a whole new file and rename it over the old one: a tool never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.ember")
    temporary.write_text(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
