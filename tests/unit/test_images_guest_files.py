"""Putting the agent into a rootfs tree, and per-sandbox writable disks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import ember
from ember.images import create_writable_disk
from ember.images.guest_agent import install_agent
from ember.settings import Settings
from ember.sparse import copy_sparse


@pytest.fixture
def fake_ember(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "src/ember"
    for name, text in {
        "__init__.py": "import host_only_things\n",
        "protocol/__init__.py": "",
        "agent/__main__.py": "print('agent')\n",
        "agent/ember-init": "#!/bin/sh\n",
        "agent/__pycache__/x.pyc": "compiled",
    }.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(ember, "__file__", str(package / "__init__.py"))
    return package


@pytest.fixture
def merged_usr_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "opt").mkdir()
    (root / "sbin").symlink_to("usr/sbin")
    return root


def test_agent_lands_under_opt_ember_with_an_empty_package_init(
    fake_ember: Path, merged_usr_root: Path
) -> None:
    install_agent(merged_usr_root)
    installed = merged_usr_root / "opt/ember/ember"
    assert (installed / "__init__.py").read_bytes() == b""
    assert (installed / "agent/__main__.py").read_text() == "print('agent')\n"
    assert (installed / "protocol/__init__.py").exists()
    assert not (installed / "agent/__pycache__").exists()
    init = merged_usr_root / "usr/sbin/ember-init"
    assert init.read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE(init.stat().st_mode) == 0o755
    assert stat.S_IMODE((installed / "agent/__main__.py").stat().st_mode) == 0o644


def test_agent_install_never_writes_through_a_hard_link(
    fake_ember: Path, merged_usr_root: Path, tmp_path: Path
) -> None:
    cached = tmp_path / "cached-ember-init"
    cached.write_text("cached tree content\n")
    os.link(cached, merged_usr_root / "usr/sbin/ember-init")
    install_agent(merged_usr_root)
    assert cached.read_text() == "cached tree content\n"
    assert (merged_usr_root / "sbin/ember-init").read_text() == "#!/bin/sh\n"


def test_agent_install_refuses_a_symlink_out_of_the_tree(fake_ember: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sbin").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the rootfs"):
        install_agent(root)
    assert list(outside.iterdir()) == []


def test_copy_sparse_keeps_content_and_holes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with source.open("wb") as file:
        file.truncate(64 << 20)
        file.seek(1 << 20)
        file.write(b"a" * 4096)
        file.seek(40 << 20)
        file.write(b"b" * 8192)
    target = tmp_path / "target"
    copy_sparse(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks * 512 <= 1 << 20
    with pytest.raises(FileExistsError):
        copy_sparse(source, target)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
def test_writable_disk_is_a_sparse_clean_ext4_labelled_ember_rw(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    disks = [tmp_path / "one.ext4", tmp_path / "two.ext4"]
    for disk in disks:
        create_writable_disk(settings, disk, 1024)
    for disk in disks:
        assert disk.stat().st_size == 1024 << 20
        assert disk.stat().st_blocks * 512 < 8 << 20
        label = subprocess.run(["e2label", disk], capture_output=True, text=True, check=True).stdout
        assert label.strip() == "ember-rw"
        subprocess.run(["e2fsck", "-fn", disk], capture_output=True, check=True)
    templates = list((tmp_path / "data/images").glob("writable-disk-*"))
    assert len(templates) == 1


def test_a_copy_that_skips_zeros_leaves_them_holes(tmp_path):
    from ember.sparse import copy_data

    source = tmp_path / "source"
    with source.open("wb") as handle:
        handle.write(b"\0" * (3 << 20) + b"data" + b"\0" * (1 << 20))  # written zeros count as data
    target = tmp_path / "target"
    with source.open("rb") as src, target.open("xb") as dst:
        copy_data(src.fileno(), dst.fileno(), skip_zeros=True)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks * 512 <= 1 << 20, "only the MiB holding data was written"
