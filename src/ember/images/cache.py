"""The artifact cache: each artifact built once per set of inputs, published whole.

Layout of the cache directory (``settings.images_dir``)::

    kernel-<digest>/          published artifacts, never modified again
    rootfs-<digest>/
    .tmp-kernel-<digest>/     a build in progress (or left by a killed one)
        out/                  becomes kernel-<digest>/ by one rename
        scratch/              thrown away
    .locks/kernel-<digest>.lock

A build holds the artifact's lock (``fcntl.flock``) from start to publish, so two
processes never build the same artifact at once: the second waits and then finds
it published. The lock is released by the kernel when its holders die, so a
``.tmp-*`` directory whose lock can be taken belongs to a dead build and is
removed. Published artifacts are never deleted here (snapshots may name them);
the engine deletes imported images once nothing uses them (``remove_published``).
Publishing survives the builder dying at any point; it does not fsync, so it
does not promise anything across a host power loss.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ember.images._workspace import Workspace
from ember.images.progress import BuildProgress

_TEMP_PREFIX = ".tmp-"
_LOCK_DIR = ".locks"
_DIGEST_CHARS = 16


@dataclass(frozen=True)
class ArtifactKey:
    """Names an artifact by its kind and a digest of everything it is built from.

    `inputs` holds strings only; file contents go in as their sha256, so that
    the inputs stay readable in the artifact's ``inputs.json``.
    """

    kind: str
    inputs: Mapping[str, str]

    @property
    def digest(self) -> str:
        encoded = json.dumps(dict(self.inputs), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()[:_DIGEST_CHARS]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.digest}"


class ArtifactCache:
    """Artifacts under one directory, each built at most once and published atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def lookup(self, key: ArtifactKey) -> Path | None:
        """The published artifact's directory, or None if it is not built."""
        path = self.root / key.name
        return path if path.is_dir() else None

    def ensure(
        self,
        key: ArtifactKey,
        build: Callable[[Workspace], None],
        progress: BuildProgress,
        *,
        force: bool = False,
    ) -> Path:
        """Return the artifact's directory, running `build` first if it is missing.

        `build` fills ``workspace.out``; nothing is published if it raises. With
        `force` the artifact is rebuilt and replaces the published one.
        """
        final = self.root / key.name
        if not force and final.is_dir():
            return final
        with self._locked(key.name, progress) as lock_fd:
            self.remove_stale(keep=key.name)
            if not force and final.is_dir():
                return final
            temp = self.root / f"{_TEMP_PREFIX}{key.name}"
            remove_tree(temp)  # ours by the lock we hold, so left by a dead build
            out, scratch = temp / "out", temp / "scratch"
            out.mkdir(parents=True)
            scratch.mkdir()
            (out / "inputs.json").write_text(json.dumps(dict(key.inputs), indent=2) + "\n")
            workspace = Workspace(out, scratch, progress, inherited_fds=(lock_fd,))
            try:
                build(workspace)
                workspace.note(f"== built in {workspace.elapsed_s:.1f} s")
            finally:
                # Free the space now; on failure out/ stays for its build.log
                # until the next build removes it as stale.
                remove_tree(scratch)
            if final.exists():
                os.rename(final, temp / "replaced")
            os.rename(out, final)
            remove_tree(temp)
        return final

    def published(self) -> list[Path]:
        """Every published artifact's directory."""
        if not self.root.is_dir():
            return []
        return [entry for entry in self.root.iterdir() if not entry.name.startswith(".") and entry.is_dir()]

    def remove_published(self, path: Path) -> bool:
        """Delete a published artifact unless a build of it holds its lock; True if it went."""
        lock_fd = self._try_lock(path.name)
        if lock_fd is None:
            return False
        try:
            remove_tree(path)
        finally:
            os.close(lock_fd)
        return True

    def remove_stale(self, keep: str | None = None) -> None:
        """Remove the temp directories of builds that died; live builds are left alone."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if not entry.name.startswith(_TEMP_PREFIX):
                continue
            name = entry.name.removeprefix(_TEMP_PREFIX)
            if name == keep:
                continue
            lock_fd = self._try_lock(name)
            if lock_fd is None:
                continue
            try:
                remove_tree(entry)
            finally:
                os.close(lock_fd)

    def _lock_path(self, name: str) -> Path:
        lock_dir = self.root / _LOCK_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        return lock_dir / f"{name}.lock"

    def _try_lock(self, name: str) -> int | None:
        fd = os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def _locked(self, name: str, progress: BuildProgress) -> Iterator[int]:
        fd = self._try_lock(name)
        if fd is None:
            progress.stage(f"waiting for another process building {name}")
            fd = os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield fd
        finally:
            os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a build directory, first detaching anything a dead build left mounted in it.

    debootstrap mounts /proc and /sys inside its target; removing a directory
    with those still mounted would walk into the host's /proc and /sys.
    """
    if not path.exists() and not path.is_symlink():
        return
    for mount_point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], check=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _mounts_under(path: Path) -> list[str]:
    root = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            lines = mountinfo.readlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        mount_point = _unescape_mountinfo(line.split()[4])
        if mount_point == root or mount_point.startswith(root + "/"):
            found.append(mount_point)
    return found


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo octal escapes.
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field
