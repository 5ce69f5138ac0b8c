"""Cache keys of the guest artifacts follow their inputs, and only their inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

import ember
from ember.images import ImagesMissing, debian_tree, find_guest_images
from ember.images import kernel as kernel_module
from ember.images.cache import ArtifactKey
from ember.images.debian_tree import debian_tree_key
from ember.images.guest_agent import agent_digest
from ember.images.kernel import kernel_key
from ember.images.rootfs import rootfs_key
from ember.settings import Settings


@pytest.fixture
def source_version(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    version = ["6.1.192-2"]
    monkeypatch.setattr(kernel_module, "_installed_version", lambda package: version[0])
    return version


@pytest.fixture
def fake_ember(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "ember"
    for name, text in {
        "__init__.py": "import host_only_things\n",
        "protocol/__init__.py": "",
        "protocol/framing.py": "FRAME = 1\n",
        "agent/__init__.py": "",
        "agent/__main__.py": "print('agent')\n",
        "agent/ember-init": "#!/bin/sh\nexec /usr/bin/python3 -m ember.agent\n",
        "agent/__pycache__/__main__.cpython-311.pyc": "compiled",
        "engine/pool.py": "HOST_ONLY = True\n",
    }.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(ember, "__file__", str(package / "__init__.py"))
    return package


def test_kernel_key_is_stable(source_version: list[str]) -> None:
    assert kernel_key().name == kernel_key().name


def test_kernel_key_follows_fragment_and_source_version(
    source_version: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = kernel_key().name
    source_version[0] = "6.1.193-1"
    assert kernel_key().name != original
    source_version[0] = "6.1.192-2"
    fragment = kernel_module.kernel_fragment()
    monkeypatch.setattr(kernel_module, "kernel_fragment", lambda: fragment + "CONFIG_FOO=y\n")
    assert kernel_key().name != original


def test_tree_key_follows_the_package_list_not_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    first = debian_tree_key()
    assert first == debian_tree_key()
    assert "mirror" not in first.inputs  # a guest's apt is pointed at the host's mirror when it runs
    monkeypatch.setattr(debian_tree, "DEBIAN_PACKAGES", (*debian_tree.DEBIAN_PACKAGES, "cowsay"))
    assert debian_tree_key().name != first.name


def test_agent_digest_covers_agent_and_protocol_but_not_caches_or_host_code(
    fake_ember: Path,
) -> None:
    original = agent_digest()
    (fake_ember / "agent/__pycache__/__main__.cpython-311.pyc").write_text("recompiled")
    (fake_ember / "engine/pool.py").write_text("HOST_ONLY = False\n")
    (fake_ember / "__init__.py").write_text("import other_host_things\n")
    assert agent_digest() == original
    (fake_ember / "protocol/framing.py").write_text("FRAME = 2\n")
    changed = agent_digest()
    assert changed != original
    (fake_ember / "agent/new.py").write_text("")
    assert agent_digest() != changed


def test_rootfs_key_follows_tree_and_agent(fake_ember: Path) -> None:
    tree = debian_tree_key()
    original = rootfs_key(tree).name
    assert rootfs_key(tree).name == original
    assert rootfs_key(ArtifactKey("debian-tree", {"packages": "other"})).name != original
    (fake_ember / "agent/__main__.py").write_text("print('changed')\n")
    assert rootfs_key(tree).name != original


def test_find_guest_images_says_how_to_build_them(tmp_path: Path, source_version: list[str]) -> None:
    settings = Settings(data_dir=tmp_path, debian_mirror="http://a.example/debian")
    with pytest.raises(ImagesMissing, match="run `ember image build`"):
        find_guest_images(settings)
