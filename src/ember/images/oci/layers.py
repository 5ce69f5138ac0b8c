"""Unpacking an image's layers into a directory, the way overlayfs would stack them.

Layers are applied bottom first. A ``.wh.NAME`` entry deletes NAME from the
layers below, and ``.wh..wh..opq`` in a directory hides everything the layers
below put there; neither touches what its own layer adds.

A layer comes from outside and its entries are written as root, so nothing may
land outside the image's root: a name with ``..`` in it, or a hard link to
one, is refused; every path is resolved inside the root, following the
symlinks already unpacked as the guest will see them (an absolute target is
relative to the image's root, ``..`` stops at it), and the entry itself is
never written through a symlink. The bytes written are counted against a
limit, so a huge image fails early instead of filling the host's disk.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ember.images.errors import ImageRejected
from ember.protocol.codes import ErrorCode

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_LINKS = 40
_CHUNK = 1 << 20
# A directory entry, an inode and a block at least: what an empty file costs on ext4.
ENTRY_BYTES = 4096


class DigestingReader:
    """Reads a stream through, keeping the sha256 and the count of what passed."""

    def __init__(self, stream: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> None:
        self._stream = stream
        self._sha = hashlib.sha256()
        self._on_bytes = on_bytes
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._sha.update(data)
        self.count += len(data)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data

    def drain(self) -> None:
        """Read to the end: a tar's trailing padding is part of its digest."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def safe_parts(name: str, what: str) -> list[str]:
    """The components of a path named in a layer, relative to the image's root.

    A leading ``/`` or ``./`` means the root; ``..`` that would leave the root is refused.
    """
    if "\0" in name:
        raise ImageRejected(f"{what}: a path with a NUL byte", ErrorCode.IMAGE_UNSAFE_PATH)
    normal = posixpath.normpath("/" + name.lstrip("/"))
    # normpath('/../x') is '/x': compare against the raw components instead.
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ImageRejected(
                    f"{what}: {name[:200]!r} leads out of the image's root", ErrorCode.IMAGE_UNSAFE_PATH
                )
        elif part not in ("", "."):
            depth += 1
    return [part for part in normal.split("/") if part]


def resolve_inside(root: str, parts: list[str]) -> str:
    """The host path of `parts` under `root` with every symlink among them followed as a
    guest with that root would (an absolute target starts again at the root).

    Components that do not exist yet are kept as named. The result is `root` or
    below it, whatever the links say.
    """
    resolved: list[str] = []
    pending = list(parts)
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise ImageRejected(
                    f"too many levels of symbolic links under /{'/'.join(parts)}",
                    ErrorCode.IMAGE_INVALID,
                )
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = target.split("/") + pending
        else:
            resolved.append(part)
    return os.path.join(root, *resolved)


class ImageTree:
    """The image's root directory on the host, written only through paths resolved inside it."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = os.path.realpath(root)
        self.max_bytes = max_bytes
        self.used_bytes = 0

    # ------------------------------------------------------------ paths

    def resolve(self, parts: list[str]) -> str:
        """The host path of `parts` with every symlink among them followed inside the root."""
        return resolve_inside(self.root, parts)

    def entry_path(self, parts: list[str], what: str) -> str:
        """Where an entry goes: its parent resolved inside the root (and made), its own name not followed."""
        if not parts:
            return self.root
        parent = self.resolve(parts[:-1])
        self._make_dirs(parent, what)
        return os.path.join(parent, parts[-1])

    def _make_dirs(self, path: str, what: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            return
        relative = os.path.relpath(path, self.root)
        current = self.root
        for part in relative.split(os.sep):
            if part in ("", "."):
                continue
            current = os.path.join(current, part)
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise ImageRejected(f"{what}: /{relative} is not a directory in the layers below")

    # ------------------------------------------------------------ changes

    def remove(self, path: str) -> None:
        """Delete whatever is at `path` (a directory with its contents), if anything."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def charge(self, size: int, what: str) -> None:
        self.used_bytes += size + ENTRY_BYTES
        if self.used_bytes > self.max_bytes:
            raise ImageRejected(
                f"{what}: the image unpacks to more than {self.max_bytes >> 20} MiB, "
                "the most this host imports (EMBER_IMAGE_MAX_MIB)",
                ErrorCode.IMAGE_TOO_LARGE,
            )


def unpack_layer(
    tree: ImageTree,
    stream: BinaryIO,
    compression: str,
    what: str,
    diff_id: str,
    digest: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Apply one layer's tar (read from `stream`) to `tree`, then check both of its digests.

    `digest` is the blob's (compressed) sha256 if it is known, `diff_id` the
    uncompressed tar's; `what` names the layer in errors.
    """
    raw = DigestingReader(stream, on_bytes)
    try:
        plain_source: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compression == "gzip" else raw  # type: ignore[arg-type, assignment]
        plain = DigestingReader(plain_source)
        with tarfile.open(fileobj=plain, mode="r|") as archive:  # type: ignore[call-overload]
            _apply(tree, archive, what)
        plain.drain()
        raw.drain()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageRejected(
            f"{what} is not a readable {compression or 'plain'} tar ({exc or type(exc).__name__})"
        ) from exc
    if digest is not None and raw.digest != digest:
        raise ImageRejected(
            f"{what}: its blob's sha256 is {raw.digest}, not {digest} as the manifest says",
            ErrorCode.IMAGE_DIGEST_MISMATCH,
        )
    if plain.digest != diff_id:
        raise ImageRejected(
            f"{what}: its tar's sha256 is {plain.digest}, not {diff_id} as the config's rootfs.diff_ids say",
            ErrorCode.IMAGE_DIGEST_MISMATCH,
        )


def _apply(tree: ImageTree, archive: tarfile.TarFile, what: str) -> None:
    created: set[str] = set()  # host paths this layer wrote: whiteouts leave them alone
    for member in archive:
        where = f"{what}, entry {member.name[:200]!r}"
        parts = safe_parts(member.name, where)
        if not parts:
            continue  # the root itself ("./")
        base = parts[-1]
        if base == OPAQUE:
            directory = tree.resolve(parts[:-1])
            if os.path.isdir(directory) and not os.path.islink(directory):
                _clear_lower(directory, created)
            continue
        if base.startswith(WHITEOUT):
            if base.startswith(WHITEOUT + WHITEOUT):
                continue  # other AUFS bookkeeping (.wh..wh.plnk): nothing to apply
            path = os.path.join(tree.resolve(parts[:-1]), base[len(WHITEOUT) :])
            if path not in created:
                tree.remove(path)
            continue
        tree.charge(member.size if member.isreg() else 0, where)
        path = tree.entry_path(parts, where)
        if path == tree.root:
            continue
        _write_entry(tree, archive, member, path, where)
        created.add(path)


def _clear_lower(directory: str, created: set[str]) -> None:
    """Opaque: remove what the layers below put in `directory`, keeping this layer's own entries."""
    for entry in os.scandir(directory):
        if entry.path not in created:
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            _clear_lower(entry.path, created)


def _write_entry(
    tree: ImageTree, archive: tarfile.TarFile, member: tarfile.TarInfo, path: str, where: str
) -> None:
    if member.isdir():
        if not (os.path.isdir(path) and not os.path.islink(path)):
            tree.remove(path)
            os.mkdir(path, 0o700)
    elif member.isreg():
        tree.remove(path)
        source = archive.extractfile(member)
        assert source is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(source, target, _CHUNK)
    elif member.issym():
        tree.remove(path)
        os.symlink(member.linkname, path)
    elif member.islnk():
        target = safe_parts(member.linkname, f"{where} (hard link target)")
        source_path = os.path.join(tree.resolve(target[:-1]), target[-1]) if target else tree.root
        if not os.path.lexists(source_path) or (
            os.path.isdir(source_path) and not os.path.islink(source_path)
        ):
            raise ImageRejected(
                f"{where}: hard link to {member.linkname[:200]!r}, which is not a file in the image",
                ErrorCode.IMAGE_UNSAFE_PATH,
            )
        tree.remove(path)
        os.link(source_path, path, follow_symlinks=False)
        return  # the link shares its target's owner, mode and times
    elif member.isfifo():
        tree.remove(path)
        os.mkfifo(path, 0o600)
    elif member.ischr() or member.isblk():
        tree.remove(path)
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        except PermissionError:
            return  # not root: the guest's devtmpfs has its devices anyway
    else:
        return  # GNU volume headers and the like: nothing to make
    _set_metadata(path, member)


def _set_metadata(path: str, member: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:
        os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            with contextlib.suppress(OSError):  # a filesystem without that namespace
                os.setxattr(
                    path, key.removeprefix("SCHILY.xattr."), value.encode("utf-8", "surrogateescape"),
                    follow_symlinks=False,
                )  # fmt: skip
    with contextlib.suppress(OSError):
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
