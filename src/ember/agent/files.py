"""File operations inside the guest: streamed reads and writes, listings, metadata.

Writes land in a temporary file beside the target and replace it only once the
whole body has arrived, so an interrupted upload never leaves half a file where
a good one was. Paths may be relative to the working directory /app. Large
files' bytes come and go on the transfer disk when the host lends its extents
(``ember.agent.extents``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import pwd
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable

from ember.agent import extents
from ember.agent._errors import AgentError, from_os_error
from ember.agent.paths import WORKDIR, as_text
from ember.protocol.codes import ErrorCode
from ember.protocol.extents import MIN_EXTENT_BODY_BYTES, SLOT_BYTES, Extent
from ember.protocol.framing import DATA_CHUNK_BYTES
from ember.protocol.messages import FileInfo

MAX_LIST_DEPTH = 16
MAX_LIST_ENTRIES = 100_000


def resolve(path: str) -> str:
    if not isinstance(path, str) or not path or "\0" in path:
        raise AgentError(ErrorCode.INVALID_REQUEST, "path must be a non-empty string without NUL bytes")
    if len(path.encode()) > 4096:
        raise AgentError(ErrorCode.INVALID_REQUEST, "path is longer than 4096 bytes")
    # normpath keeps a leading "//" (POSIX leaves it to the system; Linux reads it as "/"):
    # without this, "//" would slip past the guard against removing "/".
    return "/" + os.path.normpath(os.path.join(WORKDIR, path)).lstrip("/")


def _name_of(table: Callable[[int], object], ident: int) -> str:
    try:
        return table(ident)[0]  # type: ignore[index]
    except KeyError:
        return str(ident)


def info(path: str, st: os.stat_result | None = None) -> FileInfo:
    try:
        st = st or os.lstat(path)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    target = None
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
        with contextlib.suppress(OSError):
            target = os.readlink(path)
    else:
        kind = "other"
    return FileInfo(
        path=as_text(path),
        name=as_text(os.path.basename(path)) or "/",
        type=kind,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime=st.st_mtime,
        owner=_name_of(pwd.getpwuid, st.st_uid),
        group=_name_of(grp.getgrgid, st.st_gid),
        symlink_target=as_text(target) if target is not None else None,
    )


async def write(
    path: str, body: AsyncIterator[bytes | Extent], mode: int | None, append: bool, make_parents: bool
) -> FileInfo:
    path = resolve(path)
    if mode is not None and not 0 <= mode <= 0o7777:
        raise AgentError(ErrorCode.INVALID_REQUEST, "mode must be between 0 and 0o7777")
    directory = os.path.dirname(path)
    try:
        if make_parents:
            os.makedirs(directory, exist_ok=True)
        if os.path.isdir(path):
            raise AgentError(ErrorCode.IS_A_DIRECTORY, f"{path} is a directory")
        if append:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            temp = None
        else:
            temp = os.path.join(directory, f".{os.path.basename(path)}.ember-{os.getpid()}-{id(body)}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    buffer: extents.Buffer | None = None
    try:
        writer = extents.FileWriter(temp or path, fd, append)
        try:
            async for chunk in body:
                if isinstance(chunk, Extent):
                    buffer = buffer or extents.Buffer()
                    await extents.run_io(_write_extent, writer, chunk, buffer)
                else:
                    writer.write(memoryview(chunk))
            if temp is not None:
                _keep_metadata(path, fd)
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            writer.close()
            os.close(fd)
            if buffer is not None:
                buffer.close()
        if temp is not None:
            os.rename(temp, path)
            temp = None
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    return info(path)


def _write_extent(writer: extents.FileWriter, extent: Extent, buffer: extents.Buffer) -> None:
    writer.write(extents.read_extent(extent, buffer), in_buffer=True)


def _keep_metadata(path: str, fd: int) -> None:
    """A replaced file keeps its mode and owner, as an in-place write would."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(PermissionError):
        os.fchown(fd, st.st_uid, st.st_gid)


async def read(
    path: str,
    offset: int,
    length: int | None,
    send_info: Callable[[FileInfo], None],
    send: Callable[[bytes], Awaitable[None]],
    lent: Callable[[], Awaitable[Extent]] | None = None,
    filled: Callable[[Extent, int], None] = lambda extent, size: None,
) -> FileInfo:
    """Send the file's bytes from ``offset`` (``length`` of them, or to its end): into the
    extents the host lends (``lent``, each given back by ``filled``) for a large regular
    file, else as DATA frames (``send``).

    A regular file is read for the size its ``FileInfo`` says (what it held when it was
    opened): bytes written past it meanwhile are not sent, and a file that shrank under
    the read is an ``io_error`` once what was there has gone. Files whose size says
    nothing (procfs's, pipes) are read to their end.
    """
    path = resolve(path)
    if offset < 0 or (length is not None and length < 0):
        raise AgentError(ErrorCode.INVALID_REQUEST, "offset and length must not be negative")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise AgentError(ErrorCode.IS_A_DIRECTORY, f"{path} is a directory")
        file_info = info(path, st)
        send_info(file_info)
        sized = stat.S_ISREG(st.st_mode) and st.st_size > 0
        if sized:
            length = max(0, st.st_size - offset if length is None else min(length, st.st_size - offset))
        if lent is not None and sized and length is not None and length >= MIN_EXTENT_BODY_BYTES:
            sent = await _read_extents(path, fd, offset, length, lent, filled)
        else:
            sent = await _read_chunks(fd, offset, length, send)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    finally:
        os.close(fd)
    if sized and length is not None and sent < length:
        raise AgentError(
            ErrorCode.IO_ERROR,
            f"{path} shrank while it was read: it ended {sent} of {length} bytes after offset {offset} "
            f"(it had {st.st_size} bytes when opened); read it again",
        )
    return file_info


async def _read_chunks(
    fd: int, offset: int, length: int | None, send: Callable[[bytes], Awaitable[None]]
) -> int:
    """Up to ``length`` bytes (None: to the end) as DATA frames; how many were sent."""
    os.lseek(fd, offset, os.SEEK_SET)
    sent = 0
    while length is None or sent < length:
        chunk = os.read(fd, DATA_CHUNK_BYTES if length is None else min(DATA_CHUNK_BYTES, length - sent))
        if not chunk:
            break
        sent += len(chunk)
        await send(chunk)
    return sent


async def _read_extents(
    path: str,
    fd: int,
    offset: int,
    length: int,
    lent: Callable[[], Awaitable[Extent]],
    filled: Callable[[Extent, int], None],
) -> int:
    """Up to ``length`` bytes into the extents the host lends; how many were sent."""
    reader = extents.FileReader(path, fd, offset)
    buffer = extents.Buffer()
    sent = 0
    try:
        while sent < length:
            extent = await lent()
            size = min(extent.length, SLOT_BYTES, length - sent)
            read = await extents.run_io(_read_extent, reader, buffer, extent, size)
            if not read:
                break
            filled(extent, read)
            sent += read
    finally:
        reader.close()
        buffer.close()
    return sent


def _read_extent(reader: extents.FileReader, buffer: extents.Buffer, extent: Extent, size: int) -> int:
    read = reader.read_into(buffer, size)
    if read:
        extents.write_extent(extent, buffer, read)
    return read


def _list_sync(root: str, depth: int) -> list[FileInfo]:
    entries: list[FileInfo] = []
    pending = [(root, 1)]
    while pending:
        directory, level = pending.pop()
        try:
            with os.scandir(directory) as scan:
                items = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            if directory == root:
                raise from_os_error(exc, root) from exc
            continue
        for entry in items:
            try:
                entry_info = info(entry.path, entry.stat(follow_symlinks=False))
            except (OSError, AgentError):
                continue
            entries.append(entry_info)
            if len(entries) >= MAX_LIST_ENTRIES:
                return entries
            if entry_info.type == "dir" and level < depth:
                pending.append((entry.path, level + 1))
    return entries


async def list_dir(path: str, depth: int) -> list[FileInfo]:
    path = resolve(path)
    if not 1 <= depth <= MAX_LIST_DEPTH:
        raise AgentError(ErrorCode.INVALID_REQUEST, f"depth must be 1..{MAX_LIST_DEPTH}")
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise AgentError(ErrorCode.NOT_A_DIRECTORY, f"{path} is not a directory")
        raise AgentError(ErrorCode.FILE_NOT_FOUND, f"{path}: no such directory")
    return await asyncio.to_thread(_list_sync, path, depth)


def stat_path(path: str) -> FileInfo:
    return info(resolve(path))


def mkdir(path: str, parents: bool, exist_ok: bool) -> FileInfo:
    path = resolve(path)
    try:
        if parents:
            os.makedirs(path, exist_ok=exist_ok)
        else:
            os.mkdir(path)
    except FileExistsError as exc:
        if not (exist_ok and os.path.isdir(path)):
            raise AgentError(ErrorCode.ALREADY_EXISTS, f"{path} already exists") from exc
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    if not os.path.isdir(path):
        raise AgentError(ErrorCode.ALREADY_EXISTS, f"{path} exists and is not a directory")
    return info(path)


async def remove(path: str, recursive: bool) -> None:
    path = resolve(path)
    if path == "/":
        raise AgentError(ErrorCode.PERMISSION_DENIED, "refusing to remove /")
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                await asyncio.to_thread(shutil.rmtree, path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise from_os_error(exc, path) from exc


async def rename(source: str, destination: str, overwrite: bool) -> FileInfo:
    source, destination = resolve(source), resolve(destination)
    try:
        os.lstat(source)
        if not overwrite and os.path.lexists(destination):
            raise AgentError(ErrorCode.ALREADY_EXISTS, f"{destination} already exists")
        try:
            os.rename(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # across filesystems: copy, then delete
                raise
            await asyncio.to_thread(shutil.move, source, destination)
    except OSError as exc:
        raise from_os_error(exc) from exc
    return info(destination)
