"""Finding the Debian mirror in the host's apt configuration, in both file formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.images import MirrorNotFound
from ember.images.mirror import (
    AptSource,
    debian_mirror,
    find_apt_mirror,
    parse_deb822_sources,
    parse_sources_list,
)
from ember.settings import Settings

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def _apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_one_line_format_skips_comments_options_and_deb_src() -> None:
    sources = parse_sources_list(
        "# a comment\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://m.example/debian "
        "bookworm main contrib  # trailing comment\n"
        "\n"
        "deb http://security.example/debian-security bookworm-security main\n"
    )
    assert sources == [
        AptSource(("deb-src",), ("http://src.example/debian",), ("bookworm",)),
        AptSource(("deb",), ("http://m.example/debian",), ("bookworm",)),
        AptSource(("deb",), ("http://security.example/debian-security",), ("bookworm-security",)),
    ]


def test_deb822_format_reads_stanzas_continuations_and_enabled() -> None:
    sources = parse_deb822_sources(
        DEB822 + "\nTypes: deb deb-src\nURIs: http://a.example/debian\n"
        "  http://b.example/debian\nSuites: trixie\nEnabled: no\n"
    )
    assert sources[0] == AptSource(
        ("deb",), ("http://deb.debian.org/debian",), ("bookworm", "bookworm-updates")
    )
    assert sources[1].suites == ("bookworm-security",)
    assert sources[2] == AptSource(
        ("deb", "deb-src"),
        ("http://a.example/debian", "http://b.example/debian"),
        ("trixie",),
        enabled=False,
    )


def test_mirror_is_the_uri_of_the_suite_not_of_security_or_other_repos(tmp_path: Path) -> None:
    apt_dir = _apt_dir(
        tmp_path,
        {
            "sources.list.d/debian.sources": DEB822,
            "sources.list.d/cloud.list": "deb https://packages.example/apt cloud-sdk main\n",
            "sources.list.d/nodesource.sources.disabled": (
                "Types: deb\nURIs: https://deb.nodesource.example/node\nSuites: bookworm\n"
            ),
        },
    )
    assert find_apt_mirror("bookworm", apt_dir) == "http://deb.debian.org/debian"


def test_sources_list_is_read_before_the_parts_directory(tmp_path: Path) -> None:
    apt_dir = _apt_dir(
        tmp_path,
        {
            "sources.list": "deb http://first.example/debian/ bookworm main\n",
            "sources.list.d/debian.sources": DEB822,
        },
    )
    assert find_apt_mirror("bookworm", apt_dir) == "http://first.example/debian"


def test_disabled_entries_and_unsupported_schemes_are_ignored(tmp_path: Path) -> None:
    apt_dir = _apt_dir(
        tmp_path,
        {
            "sources.list": "deb cdrom:[Debian 12]/ bookworm main\n",
            "sources.list.d/a.sources": (
                "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
            ),
            "sources.list.d/b.list": "deb http://on.example/debian bookworm main\n",
        },
    )
    assert find_apt_mirror("bookworm", apt_dir) == "http://on.example/debian"


def test_a_host_on_another_release_still_names_its_debian_archive(tmp_path: Path) -> None:
    apt_dir = _apt_dir(
        tmp_path,
        {
            "sources.list": (
                "deb http://security.example/debian-security trixie-security main\n"
                "deb http://mirror.example/debian trixie main\n"
            )
        },
    )
    assert find_apt_mirror("bookworm", apt_dir) == "http://mirror.example/debian"


def test_no_mirror_at_all_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MirrorNotFound, match="EMBER_DEBIAN_MIRROR"):
        debian_mirror(Settings(data_dir=tmp_path), "bookworm", apt_dir=tmp_path)


def test_settings_mirror_wins_over_apt(tmp_path: Path) -> None:
    apt_dir = _apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    settings = Settings(data_dir=tmp_path, debian_mirror="http://proxy.example:3142/debian/")
    assert debian_mirror(settings, "bookworm", apt_dir) == "http://proxy.example:3142/debian"
