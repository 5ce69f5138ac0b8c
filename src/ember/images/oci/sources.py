"""Where an image comes from: an OCI layout directory, an OCI or ``docker save`` archive.

Each source gives the same `Image`: its checked config and its layers, bottom
first, each opened only when it is unpacked. Every blob read is checked against
its digest (manifests and configs at once, layers as they stream: see
``layers.unpack_layer``). A registry is the third source (``registry.py``).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ember.images.errors import ImageRejected
from ember.images.oci.manifest import (
    INDEX_TYPES,
    LAYER_TYPES,
    ImageConfig,
    Manifest,
    choose_manifest,
    load_json,
    parse_config,
    parse_docker_save,
    parse_index,
    parse_manifest,
)
from ember.protocol.codes import ErrorCode

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Layer:
    """One layer to unpack: how to open its blob and what its digests must be."""

    what: str
    diff_id: str
    compression: str
    size: int | None
    #: The blob's own sha256 (None where the blob is the tar itself: ``docker save``).
    digest: str | None
    open: Callable[[], AbstractContextManager[BinaryIO]]


@dataclass(frozen=True)
class Image:
    """An image ready to unpack; ``config_digest`` names it (the cache key)."""

    reference: str
    config: ImageConfig
    config_digest: str
    layers: tuple[Layer, ...]


def split_tag(reference: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:TAG`` (an OCI layout's ``ref.name``) as a path and a tag."""
    path = Path(reference)
    if path.exists():
        return path, None
    head, colon, tag = reference.rpartition(":")
    if colon and head and Path(head).exists() and "/" not in tag:
        return Path(head), tag
    return path, None


def is_local(reference: str) -> bool:
    """True when `reference` names a file or directory here (else it is a registry's)."""
    return split_tag(reference)[0].exists() or reference.startswith(("/", "./", "../"))


@contextmanager
def open_local(reference: str) -> Iterator[Image]:
    """The image in a layout directory or an archive at `reference` (``PATH[:TAG]``)."""
    path, tag = split_tag(reference)
    if path.is_dir():
        yield _from_layout(reference, _DirectoryBlobs(path), tag)
        return
    if not path.is_file():
        raise ImageRejected(f"{reference}: no such file or directory", ErrorCode.IMAGE_NOT_FOUND)
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
        members = {_normal(m.name): m for m in archive.getmembers()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageRejected(f"{reference} is not a readable tar archive ({exc})") from exc
    with archive:
        if "index.json" in members:
            yield _from_layout(reference, _ArchiveBlobs(archive, members, reference), tag)
        elif "manifest.json" in members:
            yield _from_docker_save(reference, archive, members)
        else:
            raise ImageRejected(
                f"{reference} holds neither index.json (an OCI archive) nor manifest.json (docker save)"
            )


def image_from(
    reference: str,
    manifest: Manifest,
    config_bytes: bytes,
    opener: Callable[[str], Callable[[], AbstractContextManager[BinaryIO]]],
) -> Image:
    """An `Image` from a checked manifest and its config's bytes; `opener(digest)` opens a layer blob."""
    check_blob(config_bytes, manifest.config.digest, manifest.config.size, "the config")
    config = parse_config(load_json(config_bytes, "the config"))
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageRejected(
            f"the manifest has {len(manifest.layers)} layers but the config's rootfs.diff_ids "
            f"has {len(config.diff_ids)}"
        )
    count = len(manifest.layers)
    layers = tuple(
        Layer(
            what=f"layer {n + 1}/{count} ({descriptor.short})",
            diff_id=config.diff_ids[n],
            compression=LAYER_TYPES[descriptor.media_type],
            size=descriptor.size,
            digest=descriptor.digest,
            open=opener(descriptor.digest),
        )
        for n, descriptor in enumerate(manifest.layers)
    )
    return Image(reference, config, manifest.config.digest, layers)


def check_blob(data: bytes, digest: str, size: int | None, what: str) -> None:
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ImageRejected(f"{what}'s sha256 is {actual}, not {digest}", ErrorCode.IMAGE_DIGEST_MISMATCH)
    if size is not None and size != len(data):
        raise ImageRejected(f"{what} is {len(data)} bytes, not {size} as its descriptor says")


# ---------------------------------------------------------------- OCI layouts


class _DirectoryBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, name: str) -> bytes:
        try:
            with self._path(name).open("rb") as file:
                return file.read(64 << 20)
        except FileNotFoundError:
            raise ImageRejected(f"{self.root}: {name} is missing") from None

    def opener(self, digest: str) -> Callable[[], AbstractContextManager[BinaryIO]]:
        path = self._path(_blob_name(digest))
        if not path.is_file():
            raise ImageRejected(f"{self.root}: blob {digest} is missing from the layout")
        return lambda: path.open("rb")

    def _path(self, name: str) -> Path:
        return self.root / name


class _ArchiveBlobs:
    def __init__(self, archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], reference: str) -> None:
        self.archive = archive
        self.members = members
        self.reference = reference

    def read(self, name: str) -> bytes:
        with self.opener_for(name)() as file:
            return file.read(64 << 20)

    def opener(self, digest: str) -> Callable[[], AbstractContextManager[BinaryIO]]:
        return self.opener_for(_blob_name(digest))

    def opener_for(self, name: str) -> Callable[[], AbstractContextManager[BinaryIO]]:
        member = self.members.get(name)
        if member is None or not member.isfile():
            raise ImageRejected(f"{self.reference}: {name} is missing from the archive")

        @contextmanager
        def open_member() -> Iterator[BinaryIO]:
            file = self.archive.extractfile(member)
            assert file is not None
            with file:
                yield file  # type: ignore[misc]

        return open_member


def _from_layout(reference: str, blobs: _DirectoryBlobs | _ArchiveBlobs, tag: str | None) -> Image:
    index = parse_index(load_json(blobs.read("index.json"), "index.json"), "index.json")
    chosen = choose_manifest(index, "index.json", tag)
    document = load_json(_checked(blobs, chosen.digest, chosen.size, "the manifest"), "the manifest")
    if chosen.media_type in INDEX_TYPES:  # an index of platforms under the tag
        inner = choose_manifest(parse_index(document, "the nested index"), "the nested index")
        document = load_json(_checked(blobs, inner.digest, inner.size, "the manifest"), "the manifest")
    manifest = parse_manifest(document)
    config_bytes = _read_blob(blobs, manifest.config.digest)
    return image_from(reference, manifest, config_bytes, blobs.opener)


def _checked(blobs: _DirectoryBlobs | _ArchiveBlobs, digest: str, size: int, what: str) -> bytes:
    data = _read_blob(blobs, digest)
    check_blob(data, digest, size, what)
    return data


def _read_blob(blobs: _DirectoryBlobs | _ArchiveBlobs, digest: str) -> bytes:
    return blobs.read(_blob_name(digest))


def _blob_name(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"blobs/{algorithm}/{hex_digest}"


# ---------------------------------------------------------------- docker save


def _from_docker_save(reference: str, archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> Image:
    blobs = _ArchiveBlobs(archive, members, reference)
    config_name, layer_names = parse_docker_save(load_json(blobs.read("manifest.json"), "manifest.json"))
    config_bytes = blobs.read(_normal(config_name))
    config = parse_config(load_json(config_bytes, f"{config_name} (the config)"), "the config")
    if len(config.diff_ids) != len(layer_names):
        raise ImageRejected(
            f"manifest.json lists {len(layer_names)} layers but the config's rootfs.diff_ids "
            f"has {len(config.diff_ids)}"
        )
    layers = []
    for n, name in enumerate(layer_names):
        opener = blobs.opener_for(_normal(name))
        with opener() as file:
            compression = "gzip" if file.read(2) == _GZIP_MAGIC else ""
        layers.append(
            Layer(
                what=f"layer {n + 1}/{len(layer_names)} ({name[:60]})",
                diff_id=config.diff_ids[n],
                compression=compression,
                size=members[_normal(name)].size,
                digest=None,
                open=opener,
            )
        )
    digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    return Image(reference, config, digest, tuple(layers))


def _normal(name: str) -> str:
    return os.path.normpath(name.lstrip("/")) if name not in ("", ".", "./") else "."
