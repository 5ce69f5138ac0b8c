"""The guest agent's files, taken from this installation of Ember and put into a rootfs.

Only ``ember.protocol`` and ``ember.agent`` go into the guest (both standard
library only), under ``/opt/ember``, with an empty ``ember/__init__.py``: the
host's ``ember/__init__.py`` imports host-only code. ember-init (the agent's
shell script) becomes ``/sbin/ember-init``, the kernel's ``init=``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import ember

GUEST_PACKAGES = ("agent", "protocol")
AGENT_ROOT = PurePosixPath("opt/ember")
INIT_SOURCE = PurePosixPath("ember/agent/ember-init")
INIT_PATH = PurePosixPath("sbin/ember-init")


def agent_files() -> dict[PurePosixPath, Path]:
    """Each file to install, by its path under `AGENT_ROOT`, mapped to its host file."""
    package_dir = Path(ember.__file__).parent
    files: dict[PurePosixPath, Path] = {}
    for package in GUEST_PACKAGES:
        for directory, subdirs, names in os.walk(package_dir / package):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in sorted(names):
                host_path = Path(directory) / name
                relative = host_path.relative_to(package_dir).as_posix()
                files[PurePosixPath("ember") / relative] = host_path
    return files


def agent_digest() -> str:
    """sha256 over the paths and contents of every installed file: changes iff the agent does."""
    digest = hashlib.sha256()
    for guest_path, host_path in sorted(agent_files().items()):
        content = host_path.read_bytes()
        digest.update(f"{guest_path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def install_agent(
    root: Path, agent_root: PurePosixPath = AGENT_ROOT, init_path: PurePosixPath = INIT_PATH
) -> None:
    """Write the agent into the rootfs tree at `root` (files root-owned, 0644; init 0755).

    Ember's own image has it in /opt/ember and /sbin/ember-init; an imported image
    keeps everything of Ember's under /.ember (``ember.images.oci``).
    """
    files = agent_files()
    if INIT_SOURCE not in files:
        raise FileNotFoundError(f"{INIT_SOURCE} is missing from this Ember installation")
    _write(root, agent_root / "ember/__init__.py", b"", 0o644)
    for guest_path, host_path in files.items():
        _write(root, agent_root / guest_path, host_path.read_bytes(), 0o644)
    _write(root, init_path, files[INIT_SOURCE].read_bytes(), 0o755)


def write_file(root: Path, guest_path: PurePosixPath, content: bytes, mode: int = 0o644) -> None:
    """Write one file of Ember's into the tree at `root`, never through a link."""
    _write(root, guest_path, content, mode)


def _write(root: Path, guest_path: PurePosixPath, content: bytes, mode: int) -> None:
    target = root / guest_path
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # /sbin is a symlink (merged /usr); make sure it does not lead out of the tree.
    resolved_root = root.resolve()
    if not target.parent.resolve().is_relative_to(resolved_root):
        raise ValueError(f"{guest_path} leads outside the rootfs tree {root}")
    # The tree may be a hard-link copy of a cached one: replace, never write through.
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
        os.fchmod(fd, mode)
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
