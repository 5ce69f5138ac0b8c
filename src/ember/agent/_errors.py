"""The one exception agent handlers raise, and how OS errors map onto stable codes."""

from __future__ import annotations

import errno

from ember.protocol.codes import ErrorCode

_ERRNO_CODES = {
    errno.ENOENT: ErrorCode.FILE_NOT_FOUND,
    errno.ENOTDIR: ErrorCode.NOT_A_DIRECTORY,
    errno.EISDIR: ErrorCode.IS_A_DIRECTORY,
    errno.EEXIST: ErrorCode.ALREADY_EXISTS,
    errno.ENOTEMPTY: ErrorCode.DIRECTORY_NOT_EMPTY,
    errno.EACCES: ErrorCode.PERMISSION_DENIED,
    errno.EPERM: ErrorCode.PERMISSION_DENIED,
    errno.EROFS: ErrorCode.PERMISSION_DENIED,
    errno.ENOSPC: ErrorCode.DISK_FULL,
    errno.EDQUOT: ErrorCode.DISK_FULL,
    errno.ENAMETOOLONG: ErrorCode.INVALID_REQUEST,
    errno.ELOOP: ErrorCode.INVALID_REQUEST,
}


class AgentError(Exception):
    """A request failed in a way the host should see as ``code`` plus a readable message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def from_os_error(exc: OSError, path: str | None = None) -> AgentError:
    code = _ERRNO_CODES.get(exc.errno or 0, ErrorCode.IO_ERROR)
    where = path or exc.filename
    reason = exc.strerror or str(exc)
    return AgentError(code, f"{where}: {reason}" if where else reason)
