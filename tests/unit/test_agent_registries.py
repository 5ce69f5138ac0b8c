"""The guest agent points pip, npm and apt at the registries the host names, in files under a root."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ember.agent import registries
from ember.agent._errors import AgentError
from ember.protocol.codes import ErrorCode
from ember.protocol.messages import PackageRegistries

EMBER_SOURCES = (
    "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
    "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
)

EVERY_TOOL = PackageRegistries(
    pip_index_url="http://pypi.lab/simple",
    pip_extra_index_urls=["https://extra.lab/simple", "https://more.lab/simple"],
    pip_trusted_hosts=["pypi.lab", "extra.lab:8443"],
    npm_registry="http://npm.lab/",
    debian_mirror="http://deb.lab/debian",
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / registries.APT_SOURCES).parent.mkdir(parents=True)
    (tmp_path / registries.APT_SOURCES).write_text(EMBER_SOURCES)
    (tmp_path / registries.NPM_RC).write_text("cache=/var/cache/npm\nregistry = https://old.example/\n")
    return tmp_path


def test_every_tool_is_pointed_at_the_hosts_registries(root: Path) -> None:
    registries.configure(EVERY_TOOL, root)
    assert (root / registries.PIP_CONF).read_text() == (
        "[global]\nindex-url = http://pypi.lab/simple\n"
        "extra-index-url = https://extra.lab/simple https://more.lab/simple\n"
        "trusted-host = pypi.lab extra.lab:8443\n"
    )
    # The user's other npm settings stay; only the registry line is Ember's.
    assert (root / registries.NPM_RC).read_text() == "cache=/var/cache/npm\nregistry=http://npm.lab/\n"
    assert (root / registries.APT_SOURCES).read_text() == EMBER_SOURCES.replace(
        "http://deb.debian.org/debian", "http://deb.lab/debian"
    )
    # The same registries again (a restore's repeat) are no change: the agent skips them.
    assert not registries.changes(dataclasses.replace(EVERY_TOOL))
    assert registries.changes(dataclasses.replace(EVERY_TOOL, npm_registry=None))


def test_empty_fields_give_each_tool_its_own_default(root: Path) -> None:
    registries.configure(PackageRegistries(pip_index_url="http://pypi.lab/simple"), root)
    registries.configure(PackageRegistries(), root)
    assert not (root / registries.PIP_CONF).exists()
    assert (root / registries.NPM_RC).read_text() == "cache=/var/cache/npm\n"
    assert (root / registries.APT_SOURCES).read_text() == EMBER_SOURCES


def test_a_guest_without_embers_apt_source_keeps_its_own(tmp_path: Path) -> None:
    registries.configure(PackageRegistries(debian_mirror="http://deb.lab/debian"), tmp_path)
    assert not (tmp_path / registries.APT_SOURCES).exists()
    assert not (tmp_path / registries.NPM_RC).exists()


@pytest.mark.parametrize(
    "bad",
    [
        PackageRegistries(pip_index_url="http://pypi.lab/simple\nindex-url = http://evil/"),
        PackageRegistries(npm_registry="file:///etc/npm"),
        PackageRegistries(debian_mirror="http:///no-host"),
        PackageRegistries(pip_extra_index_urls=["https://a.lab/simple https://b.lab/simple"]),
        PackageRegistries(pip_trusted_hosts=["lab\nindex-url = http://evil/"]),
        PackageRegistries(npm_registry="http://[::1/"),
    ],
)
def test_bad_registries_are_refused_and_nothing_is_written(root: Path, bad: PackageRegistries) -> None:
    before = {path: path.read_text() for path in root.rglob("*") if path.is_file()}
    with pytest.raises(AgentError) as raised:
        registries.configure(bad, root)
    assert raised.value.code == ErrorCode.INVALID_REQUEST
    assert {path: path.read_text() for path in root.rglob("*") if path.is_file()} == before
