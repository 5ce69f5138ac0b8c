"""OCI images as guest root filesystems: read from a layout, an archive or a registry.

``import_image`` does it all: find the image, unpack its layers (whiteouts,
opaque directories, nothing outside its root), add Ember's init, agent and
Python under ``/.ember``, pack it as ext4, cached by the image's digest.
``remove_unused_images`` deletes those no record uses any more.
"""

from ember.images.oci.build import ImportedImage, import_image, open_image, remove_unused_images
from ember.images.oci.manifest import ImageConfig

__all__ = ["ImageConfig", "ImportedImage", "import_image", "open_image", "remove_unused_images"]
