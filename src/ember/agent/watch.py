"""Watching a directory for changes with Linux inotify (through ctypes: the agent is stdlib-only).

A watch reports, as events, each entry created, written, removed, renamed away
or re-permissioned in the directory (and, recursive, in every directory below
it, including ones created while watching), with its path relative to the
watched directory. It runs until the host cancels the request or the directory
itself goes away.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Callable

from ember.agent._errors import AgentError, from_os_error
from ember.agent.files import resolve
from ember.agent.paths import as_text
from ember.protocol.codes import ErrorCode

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")
#: inotify bits and the change each one reports (a move into the directory is a creation there).
KINDS = (
    (IN_CREATE | IN_MOVED_TO, "create"),
    (IN_MODIFY, "write"),
    (IN_DELETE, "remove"),
    (IN_MOVED_FROM, "rename"),
    (IN_ATTRIB, "chmod"),
)

OnChange = Callable[[str, str], None]


def parse_events(buffer: bytes) -> list[tuple[int, int, str]]:
    """``(watch descriptor, mask, name)`` for each ``struct inotify_event`` in the buffer."""
    events, offset = [], 0
    while offset + _EVENT.size <= len(buffer):
        wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
        raw = buffer[offset + _EVENT.size : offset + _EVENT.size + length]
        events.append((wd, mask, raw.split(b"\0", 1)[0].decode(errors="surrogateescape")))
        offset += _EVENT.size + length
    return events


class _Inotify:
    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise from_os_error(OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())))

    def add(self, path: str) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK)
        if wd < 0:
            raise from_os_error(OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())), path)
        return int(wd)

    def close(self) -> None:
        os.close(self.fd)


async def watch(path: str, recursive: bool, on_start: Callable[[], None], on_change: OnChange) -> None:
    """Report changes under ``path`` until cancelled or the directory goes (see the module docstring)."""
    root = resolve(path)
    if not os.path.isdir(root):
        code = ErrorCode.NOT_A_DIRECTORY if os.path.exists(root) else ErrorCode.FILE_NOT_FOUND
        raise AgentError(code, f"{root}: not a directory")
    inotify = _Inotify()
    directories: dict[int, str] = {}

    def add_tree(directory: str) -> None:
        directories[inotify.add(directory)] = directory
        if recursive:
            for parent, names, _ in os.walk(directory):
                for name in names:
                    child = os.path.join(parent, name)
                    try:
                        directories[inotify.add(child)] = child
                    except AgentError:
                        pass  # gone again, or unreadable: nothing to watch there

    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    try:
        add_tree(root)
        root_wd = next(iter(directories))
        loop.add_reader(inotify.fd, readable.set)
        on_start()
        while True:
            await readable.wait()
            readable.clear()
            try:
                buffer = os.read(inotify.fd, 64 * 1024)
            except BlockingIOError:
                continue
            for wd, mask, name in parse_events(buffer):
                if wd == root_wd and mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    return
                directory = directories.get(wd)
                if directory is None or not name:
                    continue
                full = os.path.join(directory, name)
                if recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    add_tree(full)
                for bits, kind in KINDS:
                    if mask & bits:
                        on_change(as_text(os.path.relpath(full, root)), kind)
    finally:
        loop.remove_reader(inotify.fd)
        inotify.close()
