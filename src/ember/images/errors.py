"""What can go wrong while building or looking up guest artifacts."""

from __future__ import annotations

from pathlib import Path


class ImagesError(Exception):
    """Base of every error raised by `ember.images`."""


class ImagesMissing(ImagesError):
    """The guest artifacts for the current sources are not built yet."""


class MirrorNotFound(ImagesError):
    """No Debian mirror is configured, so the root filesystem cannot be built."""


class BuildFailed(ImagesError):
    """A build step failed; the message carries the tail of the build log."""

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path
