"""The JSON documents of an OCI (or Docker) image: index, manifest, config. No I/O here.

Every document comes from outside (an archive, a registry), so each field is
checked for its type and each media type and digest against what Ember reads;
a bad one raises `ImageRejected` naming the field (``layers[2].mediaType``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ember.images.errors import ImageRejected
from ember.protocol.codes import ErrorCode

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
#: Layer media types and the compression of each ("" for a plain tar).
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
#: The one platform Ember's guests run.
PLATFORM = ("linux", "amd64")
#: The largest JSON document read (manifests and configs are a few KB).
MAX_DOCUMENT_BYTES = 4 << 20
REF_NAME = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[^=\0]+")


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: its media type, digest and size in bytes."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: tuple[str, str] | None = None

    @property
    def short(self) -> str:
        """The digest as people read it: ``sha256:0123456789ab``."""
        return self.digest[:19]


@dataclass(frozen=True)
class Manifest:
    """One image: its config blob and its layers, bottom first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """What Ember keeps of an image's config: how its processes run, and its layers' digests.

    ``diff_ids`` are the sha256 of each layer's uncompressed tar, bottom first.
    """

    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    diff_ids: tuple[str, ...]

    @property
    def command(self) -> tuple[str, ...]:
        """The image's default command: entrypoint, then cmd (as ``docker run`` starts it)."""
        return self.entrypoint + self.cmd

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "workdir": self.workdir,
            "user": self.user,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
        }


def load_json(data: bytes, what: str) -> Any:
    """A JSON document, or `ImageRejected` saying which one is not JSON."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ImageRejected(f"{what} is {len(data)} bytes, more than a manifest or config can be")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageRejected(f"{what} is not valid JSON ({exc})") from exc


def parse_descriptor(value: Any, where: str) -> Descriptor:
    """A descriptor object (``{"mediaType", "digest", "size"}``) at `where` in its document."""
    item = _object(value, where)
    digest = _string(item, "digest", where)
    check_digest(digest, f"{where}.digest")
    size = item.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageRejected(f"{where}.size must be a byte count, not {size!r}")
    platform = None
    if isinstance(item.get("platform"), dict):
        platform = (str(item["platform"].get("os", "")), str(item["platform"].get("architecture", "")))
    annotations = item.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ImageRejected(f"{where}.annotations must be an object")
    return Descriptor(
        media_type=_string(item, "mediaType", where),
        digest=digest,
        size=size,
        annotations={str(k): str(v) for k, v in annotations.items()},
        platform=platform,
    )


def check_digest(digest: str, where: str) -> None:
    """Only sha256 digests are read: a blob's path and its check both come from them."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageRejected(
            f"{where} {str(digest)[:80]!r} is not a sha256 digest (sha256: and 64 hex digits)",
            ErrorCode.IMAGE_UNSUPPORTED if isinstance(digest, str) and ":" in digest else None,
        )


def parse_index(document: Any, where: str = "index") -> list[Descriptor]:
    """The manifests an image index (OCI index or Docker manifest list) points at."""
    index = _object(document, where)
    media_type = index.get("mediaType")
    if media_type is not None and media_type not in INDEX_TYPES:
        raise ImageRejected(
            f"{where}.mediaType {media_type!r} is not an image index", ErrorCode.IMAGE_UNSUPPORTED
        )
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ImageRejected(f"{where}.manifests must be a list")
    return [parse_descriptor(item, f"{where}.manifests[{n}]") for n, item in enumerate(manifests)]


def choose_manifest(manifests: list[Descriptor], where: str, tag: str | None = None) -> Descriptor:
    """The one manifest for linux/amd64 (or named `tag` in an OCI layout) among an index's."""
    candidates = manifests
    if tag is not None:
        candidates = [m for m in manifests if m.annotations.get(REF_NAME) == tag]
        if not candidates:
            names = sorted({m.annotations[REF_NAME] for m in manifests if REF_NAME in m.annotations})
            raise ImageRejected(
                f"{where} has no image tagged {tag!r} (tags: {', '.join(names) or 'none'})",
                ErrorCode.IMAGE_NOT_FOUND,
            )
    platformed = [m for m in candidates if m.platform is not None]
    if platformed:
        candidates = [m for m in platformed if m.platform == PLATFORM] or [
            m for m in candidates if m.platform is None
        ]
        if not candidates:
            offered = ", ".join(sorted({"/".join(m.platform) for m in platformed if m.platform}))
            raise ImageRejected(
                f"{where} has no linux/amd64 image (it has {offered})", ErrorCode.IMAGE_UNSUPPORTED
            )
    if not candidates:
        raise ImageRejected(f"{where}.manifests is empty: the index holds no image")
    if len(candidates) > 1:
        raise ImageRejected(
            f"{where} holds {len(candidates)} images; name one with PATH:TAG (an {REF_NAME} annotation)"
        )
    return candidates[0]


def parse_manifest(document: Any, where: str = "manifest") -> Manifest:
    """An image manifest (OCI or Docker schema 2): its config and layers, checked."""
    manifest = _object(document, where)
    media_type = manifest.get("mediaType")
    if media_type is not None and media_type not in MANIFEST_TYPES:
        raise ImageRejected(
            f"{where}.mediaType {media_type!r} is not an image manifest", ErrorCode.IMAGE_UNSUPPORTED
        )
    if manifest.get("schemaVersion") != 2:
        raise ImageRejected(
            f"{where}.schemaVersion is {manifest.get('schemaVersion')!r}; only schema 2 is read",
            ErrorCode.IMAGE_UNSUPPORTED,
        )
    config = parse_descriptor(manifest.get("config"), f"{where}.config")
    if config.media_type not in CONFIG_TYPES:
        raise ImageRejected(
            f"{where}.config.mediaType {config.media_type!r} is not an image config "
            "(an artifact, not a container image?)",
            ErrorCode.IMAGE_UNSUPPORTED,
        )
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageRejected(f"{where}.layers must be a list")
    parsed = tuple(parse_descriptor(item, f"{where}.layers[{n}]") for n, item in enumerate(layers))
    for n, layer in enumerate(parsed):
        if layer.media_type not in LAYER_TYPES:
            hint = (
                " (zstd layers are not read: push the image with gzip layers)"
                if "zstd" in layer.media_type
                else ""
            )
            raise ImageRejected(
                f"{where}.layers[{n}].mediaType {layer.media_type!r} is not a layer type Ember reads{hint}",
                ErrorCode.IMAGE_UNSUPPORTED,
            )
    return Manifest(config=config, layers=parsed)


def parse_config(document: Any, where: str = "config") -> ImageConfig:
    """The parts of an image config that a template keeps, checked; linux/amd64 only."""
    config = _object(document, where)
    system, architecture = config.get("os"), config.get("architecture")
    if (system, architecture) != PLATFORM:
        raise ImageRejected(
            f"{where} is for {system}/{architecture}; Ember's guests run linux/amd64",
            ErrorCode.IMAGE_UNSUPPORTED,
        )
    rootfs = _object(config.get("rootfs"), f"{where}.rootfs")
    if rootfs.get("type") != "layers":
        raise ImageRejected(f"{where}.rootfs.type must be 'layers', not {rootfs.get('type')!r}")
    diff_ids = _strings(rootfs.get("diff_ids"), f"{where}.rootfs.diff_ids")
    for n, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"{where}.rootfs.diff_ids[{n}]")
    run = config.get("config") or {}
    run = _object(run, f"{where}.config")
    env = {}
    for n, item in enumerate(_strings(run.get("Env"), f"{where}.config.Env")):
        name, equals, value = item.partition("=")
        if not equals or not _ENV_NAME.fullmatch(name) or "\0" in value:
            raise ImageRejected(f"{where}.config.Env[{n}] {item[:80]!r} is not NAME=value")
        env[name] = value
    workdir = _optional_string(run, "WorkingDir", f"{where}.config") or "/"
    if not workdir.startswith("/") or "\0" in workdir:
        raise ImageRejected(f"{where}.config.WorkingDir {workdir[:80]!r} must be an absolute path")
    user = _optional_string(run, "User", f"{where}.config")
    if "\0" in user or "\n" in user:
        raise ImageRejected(f"{where}.config.User {user[:80]!r} is not a user name or id")
    return ImageConfig(
        env=env,
        workdir=workdir,
        user=user,
        entrypoint=tuple(_strings(run.get("Entrypoint"), f"{where}.config.Entrypoint")),
        cmd=tuple(_strings(run.get("Cmd"), f"{where}.config.Cmd")),
        diff_ids=tuple(diff_ids),
    )


def parse_docker_save(document: Any, where: str = "manifest.json") -> tuple[str, list[str]]:
    """``docker save``'s manifest.json: the config file's and the layer tars' paths in the archive."""
    if not isinstance(document, list) or not document:
        raise ImageRejected(f"{where} must be a non-empty list of images")
    if len(document) > 1:
        raise ImageRejected(f"{where} holds {len(document)} images; save one image per archive")
    entry = _object(document[0], f"{where}[0]")
    config = _string(entry, "Config", f"{where}[0]")
    layers = _strings(entry.get("Layers"), f"{where}[0].Layers")
    return config, layers


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageRejected(f"{where} must be a JSON object")
    return value


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise ImageRejected(f"{where}.{key} must be a non-empty string")
    return value


def _optional_string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageRejected(f"{where}.{key} must be a string")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImageRejected(f"{where} must be a list of strings")
    return value
