"""The pair of artifacts every VM boots from: guest kernel and base rootfs image."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ember.images.cache import ArtifactCache, ArtifactKey
from ember.images.debian_tree import DEBIAN_SUITE, TREE_DIR, build_debian_tree, debian_tree_key
from ember.images.errors import ImagesMissing, MirrorNotFound
from ember.images.kernel import KERNEL_FILE, build_kernel, kernel_key
from ember.images.mirror import debian_mirror
from ember.images.progress import BuildProgress
from ember.images.rootfs import ROOTFS_FILE, build_rootfs, rootfs_key
from ember.settings import Settings


@dataclass(frozen=True)
class GuestImages:
    """Paths of the kernel and rootfs to boot, and their cache ids.

    An id (``kernel-<digest>``, ``rootfs-<digest>``) names the exact artifact and
    stays valid while the artifact exists: record it wherever a VM's state
    depends on the exact bytes (snapshots).
    """

    kernel: Path
    rootfs: Path
    kernel_id: str
    rootfs_id: str


def ensure_guest_images(
    settings: Settings, progress: BuildProgress | None = None, *, force: bool = False
) -> GuestImages:
    """Build whatever is missing for the current sources and return the artifacts.

    Returns at once when everything is built. `force` rebuilds everything,
    debootstrap included.
    """
    progress = progress or BuildProgress()
    cache = ArtifactCache(settings.images_dir)
    cache.remove_stale()
    kernel = kernel_key()
    kernel_dir = cache.ensure(kernel, build_kernel, progress, force=force)

    tree = debian_tree_key()
    rootfs = rootfs_key(tree)
    rootfs_dir = None if force else cache.lookup(rootfs)
    if rootfs_dir is None:
        tree_dir = ensure_debian_tree(settings, progress, force=force)
        rootfs_dir = cache.ensure(rootfs, partial(build_rootfs, tree=tree_dir), progress, force=force)
    return _images(kernel, kernel_dir, rootfs, rootfs_dir)


def ensure_debian_tree(settings: Settings, progress: BuildProgress, *, force: bool = False) -> Path:
    """The Debian tree Ember's guests are made of (``debian_tree``), built if missing (minutes)."""
    cache, key = ArtifactCache(settings.images_dir), debian_tree_key()
    built = None if force else cache.lookup(key)
    if built is None:  # the mirror is looked for only to build
        build = partial(build_debian_tree, mirror=debian_mirror(settings, DEBIAN_SUITE))
        built = cache.ensure(key, build, progress, force=force)
    return built / TREE_DIR


def find_guest_images(settings: Settings) -> GuestImages:
    """The built artifacts for the current sources; raises `ImagesMissing` instead of building."""
    cache = ArtifactCache(settings.images_dir)
    kernel = kernel_key()
    rootfs = rootfs_key(debian_tree_key())
    kernel_dir, rootfs_dir = cache.lookup(kernel), cache.lookup(rootfs)
    if kernel_dir is None or rootfs_dir is None:
        missing = [
            f"{what} {key.name}"
            for what, key, found in (
                ("guest kernel", kernel, kernel_dir),
                ("root filesystem", rootfs, rootfs_dir),
            )
            if found is None
        ]
        raise ImagesMissing(
            f"{' and '.join(missing)} not built for the current sources in "
            f"{settings.images_dir}: run `ember image build`"
        )
    return _images(kernel, kernel_dir, rootfs, rootfs_dir)


def guest_debian_mirror(settings: Settings) -> str | None:
    """The Debian mirror a guest's apt is pointed at: the one the base is built from
    (``EMBER_DEBIAN_MIRROR``, else this host's apt source for the guest's suite)."""
    try:
        return debian_mirror(settings, DEBIAN_SUITE)
    except MirrorNotFound:
        return None


def _images(kernel: ArtifactKey, kernel_dir: Path, rootfs: ArtifactKey, rootfs_dir: Path) -> GuestImages:
    return GuestImages(
        kernel=kernel_dir / KERNEL_FILE,
        rootfs=rootfs_dir / ROOTFS_FILE,
        kernel_id=kernel.name,
        rootfs_id=rootfs.name,
    )
