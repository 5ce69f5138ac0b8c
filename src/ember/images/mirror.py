"""Which Debian mirror the root filesystem comes from.

``settings.debian_mirror`` wins; otherwise the host's own apt configuration is
read, so a machine that can install packages can also build the guest, through
the same mirror or proxy, with nothing to configure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ember.images.errors import MirrorNotFound
from ember.settings import Settings

APT_DIR = Path("/etc/apt")
_SCHEMES = ("http", "https", "ftp", "file")


@dataclass(frozen=True)
class AptSource:
    """One apt source entry, from either file format."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    enabled: bool = True


def debian_mirror(settings: Settings, suite: str, apt_dir: Path = APT_DIR) -> str:
    """The mirror URI to build `suite` from; raises `MirrorNotFound` if there is none."""
    if settings.debian_mirror:
        return settings.debian_mirror.rstrip("/")
    mirror = find_apt_mirror(suite, apt_dir)
    if mirror is None:
        raise MirrorNotFound(
            f"no Debian mirror for {suite!r} in {apt_dir}/sources.list or "
            f"{apt_dir}/sources.list.d/; set EMBER_DEBIAN_MIRROR "
            "(for example http://deb.debian.org/debian)"
        )
    return mirror


def find_apt_mirror(suite: str, apt_dir: Path = APT_DIR) -> str | None:
    """The URI of the host's ``deb`` entry for `suite`.

    Failing that, the first ``deb`` entry whose URI is a Debian archive root
    (ends in ``/debian``): a host on a newer release still names a mirror that
    carries `suite`.
    """
    sources = [source for source in _host_sources(apt_dir) if source.enabled and "deb" in source.types]
    candidates = [
        (uri.rstrip("/"), source)
        for source in sources
        for uri in source.uris
        if urlsplit(uri).scheme in _SCHEMES
    ]
    for uri, source in candidates:
        if suite in source.suites:
            return uri
    for uri, _ in candidates:
        if urlsplit(uri).path.rstrip("/").endswith("/debian"):
            return uri
    return None


def parse_sources_list(text: str) -> list[AptSource]:
    """Entries of a one-line-style ``.list`` file: ``deb [options] URI SUITE COMPONENT...``."""
    sources = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) < 2:
            continue
        sources.append(AptSource(types=(kind,), uris=(rest[0],), suites=(rest[1],)))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Entries of a deb822-style ``.sources`` file (stanzas of ``Field: value`` lines)."""
    sources = []
    for stanza in _deb822_stanzas(text):
        sources.append(
            AptSource(
                types=tuple(stanza.get("types", "").split()),
                uris=tuple(stanza.get("uris", "").split()),
                suites=tuple(stanza.get("suites", "").split()),
                enabled=stanza.get("enabled", "yes").strip().lower() != "no",
            )
        )
    return sources


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    field = None
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, field = {}, None
        elif line[0] in " \t" and field is not None:
            fields[field] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            field = name.strip().lower()
            fields[field] = value.strip()
    return stanzas


def _host_sources(apt_dir: Path) -> list[AptSource]:
    sources = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        sources += parse_sources_list(main_list.read_text(encoding="utf-8", errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_sources_list(path.read_text(encoding="utf-8", errors="replace"))
            elif path.suffix == ".sources":
                sources += parse_deb822_sources(path.read_text(encoding="utf-8", errors="replace"))
    return sources
