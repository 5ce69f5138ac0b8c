"""Ember's guest artifacts: kernel, base root filesystem, writable disks, and their cache.

Everything a VM boots from is built here from sources on the host (Debian's
kernel source, a Debian mirror, the agent's files in this installation) and
cached under ``settings.images_dir`` by a digest of those sources.
"""

from ember.images.errors import BuildFailed, ImagesError, ImagesMissing, MirrorNotFound
from ember.images.guest import GuestImages, ensure_guest_images, find_guest_images, guest_debian_mirror
from ember.images.progress import BuildProgress
from ember.images.writable_disk import create_writable_disk

__all__ = [
    "BuildFailed",
    "BuildProgress",
    "GuestImages",
    "ImagesError",
    "ImagesMissing",
    "MirrorNotFound",
    "create_writable_disk",
    "ensure_guest_images",
    "find_guest_images",
    "guest_debian_mirror",
]
