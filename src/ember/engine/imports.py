"""Root filesystems imported from OCI images (``settings.oci_dir``), kept while anything uses them.

A template made from an image boots from the image's root filesystem, and every
sandbox and snapshot descended from it names that file as its ``rootfs``. Like a
disk layer (``disks``), an image is deleted once no record names it: no
template, no snapshot (a retired one still mapped by a sandbox included), no
live sandbox. The manager's collection calls ``collect``; at daemon start that
also removes what an import killed mid-way left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ember.images.oci import remove_unused_images
from ember.settings import Settings

log = logging.getLogger("ember.engine")


class ImportedImages:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._importing = 0

    @contextmanager
    def importing(self) -> Iterator[None]:
        """Hold every image while an import runs: the image it builds, or finds built, is named
        by no record until the sandbox booted from it is saved."""
        self._importing += 1
        try:
            yield
        finally:
            self._importing -= 1

    def collect(self, rootfs_in_use: Iterable[str]) -> None:
        """Delete the images none of `rootfs_in_use` (every record's rootfs) is, unless an import runs."""
        if self._importing:
            return
        removed = remove_unused_images(self.settings, rootfs_in_use)
        if removed:
            log.info("removed %d unused imported images: %s", len(removed), ", ".join(removed))
