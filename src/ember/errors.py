"""The exceptions Ember raises: one class per stable error code.

The same tree serves the engine, the HTTP API (``status``) and the SDK, so an
error raised inside a guest reaches a user's ``except`` clause with its code::

    EmberError                          code            status
    ├── InvalidRequestError             invalid_request   400
    │   ├── PayloadTooLargeError        payload_too_large 413
    │   │   └── ImageTooLargeError      image_too_large   413
    │   ├── UnknownOperationError       unknown_operation 400
    │   └── ImageInvalidError           image_invalid     400
    │       ├── ImageUnsupportedError   image_unsupported
    │       ├── ImageDigestMismatchError image_digest_mismatch
    │       └── ImageUnsafePathError    image_unsafe_path
    ├── AuthenticationError             unauthorized      401
    ├── PermissionDeniedError           permission_denied 403
    ├── MethodNotAllowedError           method_not_allowed 405
    ├── NotFoundError                                     404
    │   ├── RouteNotFoundError          not_found
    │   ├── SandboxNotFoundError        sandbox_not_found
    │   ├── TemplateNotFoundError       template_not_found
    │   ├── SnapshotNotFoundError       snapshot_not_found
    │   ├── KeyNotFoundError            key_not_found
    │   ├── PathNotFoundError           file_not_found
    │   ├── ImageNotFoundError          image_not_found
    │   ├── ProcessNotFoundError        process_not_found
    │   ├── ContextNotFoundError        context_not_found
    │   └── PortNotExposedError         port_not_exposed
    ├── ConflictError                                     409
    │   ├── AlreadyExistsError          already_exists
    │   ├── NotADirectoryError          not_a_directory
    │   ├── IsADirectoryError           is_a_directory
    │   ├── DirectoryNotEmptyError      directory_not_empty
    │   ├── SandboxNotRunningError      sandbox_not_running
    │   ├── SnapshotIncompatibleError   snapshot_incompatible
    │   ├── TemplateBuildFailedError    template_build_failed
    │   └── NetworkDisabledError        network_disabled
    ├── SandboxDeadError                sandbox_dead      410
    ├── ExecTimeoutError                exec_timeout      408
    ├── HttpError                       http_error        its own
    ├── CancelledError                  cancelled         499
    ├── QuotaExceededError              quota_exceeded    429
    ├── ResourceExhaustedError          resource_exhausted 507
    ├── DiskFullError                   disk_full         507
    ├── ExecFailedError                 exec_failed       422
    │   └── PythonUnavailableError      python_unavailable
    ├── RegistryUnauthorizedError       registry_unauthorized 403
    └── ServerError                                       500/502/503
        ├── InternalError               internal_error
        ├── ProtocolError               protocol_error    502
        ├── IOError                     io_error
        ├── BootFailedError             boot_failed
        ├── AgentUnavailableError       agent_unavailable 503
        ├── ImagesMissingError          images_missing    503
        ├── IsolationUnavailableError   isolation_unavailable 503
        ├── NetworkError                network_error
        ├── PortUnreachableError        port_unreachable  502
        ├── RegistryError               registry_error    502
        ├── VmmError                    vmm_error
        ├── ClusterUnavailableError     cluster_unavailable 503
        └── HostUnavailableError        host_unavailable  503
"""

from __future__ import annotations

from typing import Any

from ember.protocol.codes import ErrorCode


class EmberError(Exception):
    """Base of every Ember error: a stable ``code``, an HTTP ``status`` and a message.

    ``details``, when an error has them, are facts a program can act on (which
    quota, its limit and the use); they travel in the error body beside the message.
    """

    code: str = ErrorCode.INTERNAL_ERROR.value
    status: int = 500

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class InvalidRequestError(EmberError):
    code = ErrorCode.INVALID_REQUEST.value
    status = 400


class PayloadTooLargeError(InvalidRequestError):
    code = ErrorCode.PAYLOAD_TOO_LARGE.value
    status = 413


class UnknownOperationError(InvalidRequestError):
    code = ErrorCode.UNKNOWN_OPERATION.value


class ImageTooLargeError(PayloadTooLargeError):
    """An OCI image unpacks to more than the host allows (EMBER_IMAGE_MAX_MIB)."""

    code = ErrorCode.IMAGE_TOO_LARGE.value


class ImageInvalidError(InvalidRequestError):
    """An OCI image is malformed: a corrupt archive, a missing or wrong field; the message names it."""

    code = ErrorCode.IMAGE_INVALID.value


class ImageUnsupportedError(ImageInvalidError):
    """An OCI image uses a media type, platform or digest algorithm Ember does not read."""

    code = ErrorCode.IMAGE_UNSUPPORTED.value


class ImageDigestMismatchError(ImageInvalidError):
    """A blob of an OCI image is not what its digest says."""

    code = ErrorCode.IMAGE_DIGEST_MISMATCH.value


class ImageUnsafePathError(ImageInvalidError):
    """A layer names a path outside the image's root (``../``, a hard link out of it)."""

    code = ErrorCode.IMAGE_UNSAFE_PATH.value


class AuthenticationError(EmberError):
    code = ErrorCode.UNAUTHORIZED.value
    status = 401


class PermissionDeniedError(EmberError):
    code = ErrorCode.PERMISSION_DENIED.value
    status = 403


class MethodNotAllowedError(EmberError):
    code = ErrorCode.METHOD_NOT_ALLOWED.value
    status = 405


class NotFoundError(EmberError):
    status = 404


class RouteNotFoundError(NotFoundError):
    """No route at that path: a misspelt URL, or an empty or slashed path parameter."""

    code = ErrorCode.NOT_FOUND.value


class SandboxNotFoundError(NotFoundError):
    code = ErrorCode.SANDBOX_NOT_FOUND.value


class TemplateNotFoundError(NotFoundError):
    code = ErrorCode.TEMPLATE_NOT_FOUND.value


class SnapshotNotFoundError(NotFoundError):
    code = ErrorCode.SNAPSHOT_NOT_FOUND.value


class KeyNotFoundError(NotFoundError):
    code = ErrorCode.KEY_NOT_FOUND.value


class PathNotFoundError(NotFoundError):
    code = ErrorCode.FILE_NOT_FOUND.value


class ImageNotFoundError(NotFoundError):
    """No OCI image at that path, or no such repository or tag in the registry."""

    code = ErrorCode.IMAGE_NOT_FOUND.value


class ProcessNotFoundError(NotFoundError):
    code = ErrorCode.PROCESS_NOT_FOUND.value


class ContextNotFoundError(NotFoundError):
    code = ErrorCode.CONTEXT_NOT_FOUND.value


class PortNotExposedError(NotFoundError):
    code = ErrorCode.PORT_NOT_EXPOSED.value


class ConflictError(EmberError):
    status = 409


class NetworkDisabledError(ConflictError):
    """The sandbox's network policy is ``none``: nothing to expose or reach."""

    code = ErrorCode.NETWORK_DISABLED.value


class SnapshotIncompatibleError(ConflictError):
    """The snapshot was taken on guest images this host no longer has."""

    code = ErrorCode.SNAPSHOT_INCOMPATIBLE.value


class TemplateBuildFailedError(ConflictError):
    """A template step failed; the message carries its output."""

    code = ErrorCode.TEMPLATE_BUILD_FAILED.value


class AlreadyExistsError(ConflictError):
    code = ErrorCode.ALREADY_EXISTS.value


class NotADirectoryError(ConflictError):
    code = ErrorCode.NOT_A_DIRECTORY.value


class IsADirectoryError(ConflictError):
    code = ErrorCode.IS_A_DIRECTORY.value


class DirectoryNotEmptyError(ConflictError):
    code = ErrorCode.DIRECTORY_NOT_EMPTY.value


class SandboxNotRunningError(ConflictError):
    code = ErrorCode.SANDBOX_NOT_RUNNING.value


class SandboxDeadError(EmberError):
    code = ErrorCode.SANDBOX_DEAD.value
    status = 410


class ExecTimeoutError(EmberError):
    """An operation ran out of its time. Not a ``builtins.TimeoutError``: code that waits
    with asyncio catches that for its own deadlines, and must not take this one for it."""

    code = ErrorCode.EXEC_TIMEOUT.value
    status = 408


class CancelledError(EmberError):
    code = ErrorCode.CANCELLED.value
    status = 499


class HttpError(EmberError):
    """An HTTP answer that carries no Ember error (a proxy's page in front of the daemon): its
    status is the answer's, its message the page's text."""

    code = ErrorCode.HTTP_ERROR.value

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class QuotaExceededError(EmberError):
    """The request would take its API key past a quota; ``details`` say which, its limit and the use."""

    code = ErrorCode.QUOTA_EXCEEDED.value
    status = 429


class ResourceExhaustedError(EmberError):
    code = ErrorCode.RESOURCE_EXHAUSTED.value
    status = 507


class DiskFullError(EmberError):
    code = ErrorCode.DISK_FULL.value
    status = 507


class ExecFailedError(EmberError):
    code = ErrorCode.EXEC_FAILED.value
    status = 422


class PythonUnavailableError(ExecFailedError):
    """run_code in Python, in a sandbox whose image has no python3."""

    code = ErrorCode.PYTHON_UNAVAILABLE.value


class RegistryUnauthorizedError(EmberError):
    """A registry refused the credentials (or their absence) for an image."""

    code = ErrorCode.REGISTRY_UNAUTHORIZED.value
    status = 403


class ServerError(EmberError):
    status = 500


class InternalError(ServerError):
    code = ErrorCode.INTERNAL_ERROR.value


class ProtocolError(ServerError):
    code = ErrorCode.PROTOCOL_ERROR.value
    status = 502


class IOError(ServerError):
    code = ErrorCode.IO_ERROR.value


class NetworkError(ServerError):
    """Setting up or changing a sandbox's host network failed; the message says which command."""

    code = ErrorCode.NETWORK_ERROR.value


class PortUnreachableError(ServerError):
    """Nothing answers on an exposed port inside the sandbox."""

    code = ErrorCode.PORT_UNREACHABLE.value
    status = 502


class RegistryError(ServerError):
    """A registry could not be reached or answered something that is not the registry API."""

    code = ErrorCode.REGISTRY_ERROR.value
    status = 502


class BootFailedError(ServerError):
    code = ErrorCode.BOOT_FAILED.value


class AgentUnavailableError(ServerError):
    code = ErrorCode.AGENT_UNAVAILABLE.value
    status = 503


class ImagesMissingError(ServerError):
    code = ErrorCode.IMAGES_MISSING.value
    status = 503


class IsolationUnavailableError(ServerError):
    """This host cannot jail a sandbox's VMM as configured; the message names what is missing."""

    code = ErrorCode.ISOLATION_UNAVAILABLE.value
    status = 503


class VmmError(ServerError):
    code = ErrorCode.VMM_ERROR.value


class ClusterUnavailableError(ServerError):
    """etcd has no quorum (or cannot be reached): running sandboxes go on, creates are refused."""

    code = ErrorCode.CLUSTER_UNAVAILABLE.value
    status = 503


class HostUnavailableError(ServerError):
    """The host that runs a sandbox or holds a snapshot does not answer (its lease expired)."""

    code = ErrorCode.HOST_UNAVAILABLE.value
    status = 503


def _leaves(cls: type[EmberError]) -> list[type[EmberError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_leaves(sub))
    return found


_BY_CODE: dict[str, type[EmberError]] = {}
for _cls in _leaves(EmberError)[1:]:
    if "code" in vars(_cls):
        _BY_CODE.setdefault(_cls.code, _cls)


def error_for(code: str, message: str, details: dict[str, Any] | None = None) -> EmberError:
    """The exception for a code received over the wire; unknown codes keep their code."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return EmberError(message, code=code, details=details)
    return cls(message, details=details)
