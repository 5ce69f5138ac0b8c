"""An OCI image made into a guest root filesystem: unpacked, Ember added under /.ember, packed.

The image's own files are left as they are: Ember adds only ``/.ember`` (its
init, agent, Debian's Python and busybox: ``runtime``), the mount points its init needs
(``/dev``, ``/proc``, ``/sys``, ``/mnt``, ``/run``, ``/tmp``) where the image
has none, and the image's working directory if it is missing (as ``docker run``
makes it). The agent reads the image's environment, working directory and user
from ``/.ember/image.json``.

Root filesystems are cached by the image's config digest (which names its
layers by their digests), Ember's agent and runtime: a second import of the same
image reads its manifest and config, finds the image built, checks its size
against today's limit, and is done. The engine deletes those no record uses
(``remove_unused_images``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactCache, ArtifactKey, remove_tree
from ember.images.errors import ImageRejected
from ember.images.guest_agent import agent_digest, install_agent, write_file
from ember.images.oci.layers import ImageTree, unpack_layer
from ember.images.oci.manifest import ImageConfig
from ember.images.oci.registry import Credentials, open_registry
from ember.images.oci.runtime import (
    BIN_DIR,
    GUEST_ROOT,
    PYTHON_COMMAND,
    RUNTIME_DIR,
    compile_modules,
    ensure_runtime,
    link_tree,
)
from ember.images.oci.sources import Image, is_local, open_local
from ember.images.progress import BuildProgress
from ember.images.rootfs import pack_ext4
from ember.protocol.codes import ErrorCode
from ember.settings import Settings

IMAGE_ROOTFS_LABEL = "ember-image"
IMAGE_ROOTFS_FILE = "rootfs.ext4"
IMAGE_FILE = "image.json"
#: The kernel's init for an imported image.
INIT = GUEST_ROOT / "init"
AGENT_DIR = GUEST_ROOT / "agent"
GUEST_CONFIG = GUEST_ROOT / "image.json"
MOUNT_POINTS = ("dev", "proc", "sys", "mnt", "run", "tmp")
# Bump when the steps below change the image.
IMAGE_BUILDER_VERSION = "2"


@dataclass(frozen=True)
class ImportedImage:
    """A built root filesystem for an image, and what the image says about how it runs."""

    reference: str
    digest: str
    config: ImageConfig
    rootfs: Path
    rootfs_id: str
    init: str = str(INIT)
    cached: bool = False


def open_image(
    reference: str, *, credentials: Credentials | None = None, insecure: tuple[str, ...] = ()
) -> AbstractContextManager[Image]:
    """The image at a local path (layout directory or archive) or in a registry."""
    if is_local(reference):
        return open_local(reference)
    return open_registry(reference, credentials=credentials, insecure=insecure)


def import_image(
    settings: Settings,
    reference: str,
    progress: BuildProgress | None = None,
    *,
    credentials: Credentials | None = None,
) -> ImportedImage:
    """Build (or find built) the root filesystem of the image `reference` names.

    Raises `ImageRejected` (with a stable code) for a bad image, `BuildFailed` when a
    build step fails; either way nothing is published.
    """
    progress = progress or BuildProgress()
    runtime = ensure_runtime(settings, progress)
    progress.stage(f"reading {reference}")
    with open_image(reference, credentials=credentials, insecure=settings.insecure_registries) as image:
        key = ArtifactKey(
            "image",
            {
                "agent": agent_digest(),
                "builder": IMAGE_BUILDER_VERSION,
                "image": image.config_digest,
                "runtime": runtime.name,
            },
        )
        cache = ArtifactCache(settings.oci_dir)
        cached = cache.lookup(key) is not None
        max_bytes = settings.image_max_mib << 20
        remote = not is_local(reference)
        build = partial(_build, image=image, runtime=runtime, max_bytes=max_bytes, remote=remote)
        out = cache.ensure(key, build, progress)
        _check_size(out, max_bytes, reference)
        return ImportedImage(
            reference=reference,
            digest=image.config_digest,
            config=image.config,
            rootfs=out / IMAGE_ROOTFS_FILE,
            rootfs_id=key.name,
            cached=cached,
        )


def remove_unused_images(settings: Settings, rootfs_in_use: Iterable[str]) -> list[str]:
    """Delete every imported root filesystem none of `rootfs_in_use` (the rootfs paths of records:
    templates, snapshots, sandboxes) is in, and what imports that died left; returns the names gone.

    Images are told apart by their directory's name (``image-<digest>``), never by a whole path,
    so a record that spells the data directory differently still keeps its image.
    """
    cache = ArtifactCache(settings.oci_dir)
    cache.remove_stale()
    used = {PurePosixPath(path).parent.name for path in rootfs_in_use}
    unused = [path for path in cache.published() if path.name not in used]
    return [path.name for path in unused if cache.remove_published(path)]


def _build(workspace: Workspace, image: Image, runtime: Path, max_bytes: int, remote: bool) -> None:
    root = workspace.scratch / "root"
    root.mkdir(mode=0o755)
    tree = ImageTree(root, max_bytes)
    verb = "pulling and unpacking" if remote else "unpacking"
    for layer in image.layers:
        workspace.stage(f"{verb} {layer.what}", total=layer.size)
        with layer.open() as stream:
            unpack_layer(
                tree, stream, layer.compression, layer.what, layer.diff_id, layer.digest,
                on_bytes=workspace.progress.advance,
            )  # fmt: skip
    workspace.note(f"unpacked {len(image.layers)} layers: {tree.used_bytes} bytes")
    workspace.stage("adding Ember's init, agent and Python")
    _add_ember(workspace, tree, image.config, runtime)
    pack_ext4(workspace, root, IMAGE_ROOTFS_LABEL, workspace.out / IMAGE_ROOTFS_FILE)
    record = {
        "reference": image.reference,
        "digest": image.config_digest,
        "config": image.config.to_json(),
        "unpacked_bytes": tree.used_bytes,
    }
    (workspace.out / IMAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _add_ember(workspace: Workspace, tree: ImageTree, config: ImageConfig, runtime: Path) -> None:
    root = Path(tree.root)
    for name in MOUNT_POINTS:
        path = root / name
        if not os.path.lexists(path):
            path.mkdir(mode=0o1777 if name == "tmp" else 0o755)
            os.chmod(path, 0o1777 if name == "tmp" else 0o755)
    workdir = tree.resolve(_parts(config.workdir))
    os.makedirs(workdir, mode=0o755, exist_ok=True)
    ember = root / GUEST_ROOT.relative_to("/")
    remove_tree(ember)  # never the image's: everything of Ember's is under it
    link_tree(runtime / RUNTIME_DIR, ember, workspace)
    install_agent(root, AGENT_DIR.relative_to("/"), GUEST_ROOT.relative_to("/") / "ember-init")
    write_file(root, INIT.relative_to("/"), init_script().encode(), 0o755)
    guest_config = {"env": config.env, "workdir": config.workdir, "user": config.user}
    write_file(root, GUEST_CONFIG.relative_to("/"), json.dumps(guest_config).encode())
    # The agent compiled by the Python it runs on (the runtime's stdlib already is).
    compile_modules(workspace, runtime, root / AGENT_DIR.relative_to("/"), root, PurePosixPath("/"))


def init_script() -> str:
    """The imported image's init: Ember's init (ember-init), run by the runtime's busybox."""
    return (
        f"#!{BIN_DIR}/busybox sh\n"
        "# Ember's init for an image imported from OCI (ember.images.oci): ember-init, with\n"
        "# the agent's own Python and tools; the image's own files are left alone.\n"
        f"export PATH={BIN_DIR}\n"
        f'export EMBER_PYTHON="{PYTHON_COMMAND}"\n'
        f"export EMBER_AGENT_PATH={AGENT_DIR} EMBER_APP_DIR= EMBER_AGENT_IMAGE={GUEST_CONFIG}\n"
        f"export EMBER_AGENT_SHELL={BIN_DIR}/sh\n"
        f". {GUEST_ROOT}/ember-init\n"
    )


def _check_size(built: Path, max_bytes: int, reference: str) -> None:
    """Refuse an image bigger than today's limit even when it was built under a larger one."""
    unpacked_bytes = json.loads((built / IMAGE_FILE).read_text())["unpacked_bytes"]
    if unpacked_bytes > max_bytes:
        raise ImageRejected(
            f"{reference}: the image unpacks to {unpacked_bytes >> 20} MiB, more than the "
            f"{max_bytes >> 20} MiB this host imports (EMBER_IMAGE_MAX_MIB)",
            ErrorCode.IMAGE_TOO_LARGE,
        )


def _parts(path: str) -> list[str]:
    return [part for part in PurePosixPath(path).parts if part != "/"]
