"""What can go wrong while building or looking up guest artifacts."""

from __future__ import annotations

from pathlib import Path

from ember.protocol.codes import ErrorCode


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


class ImageRejected(ImagesError):
    """An OCI image that cannot become a template: bad input, named by its stable `code`.

    The message names the layer, blob or field at fault. The engine turns it into the
    ``ember.errors`` class of the same code.
    """

    code: ErrorCode = ErrorCode.IMAGE_INVALID

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
