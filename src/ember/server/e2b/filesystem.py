"""E2B's filesystem service (``/filesystem.Filesystem/*``) and envd's ``/files`` and ``/health``.

Entries are Ember's ``FileInfo`` in E2B's ``EntryInfo`` shape. Uploads stream
to the guest as they arrive: an ``application/octet-stream`` body goes straight
through; a multipart body is parsed part by part (python-multipart spools a
large part to disk, never to memory) and each file is written in turn.
"""

from __future__ import annotations

import datetime
import stat
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.protocol import messages as m
from ember.server.e2b import connect
from ember.server.e2b.connect import ConnectError, Message
from ember.server.e2b.plane import sandbox_of, sandbox_path

_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
_UPLOAD_CHUNK = 1024 * 1024


def entry(info: m.FileInfo) -> Message:
    """An ``EntryInfo`` (proto3 JSON: int64 as a string, time as RFC 3339)."""
    modified = datetime.datetime.fromtimestamp(info.mtime, datetime.UTC)
    body: Message = {
        "name": info.name,
        "type": _TYPES.get(info.type, "FILE_TYPE_UNSPECIFIED"),
        "path": info.path,
        "size": str(info.size),
        "mode": info.mode & 0o7777,
        "permissions": stat.filemode(info.mode),
        "owner": info.owner,
        "group": info.group,
        "modifiedTime": modified.isoformat().replace("+00:00", "Z"),
        "isSymlink": info.type == "symlink",
    }
    if info.symlink_target is not None:
        body["symlinkTarget"] = info.symlink_target
    return body


def required_path(message: Message, name: str = "path") -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value:
        raise ConnectError("invalid_argument", f"{name} is required")
    return sandbox_path(value)


async def _stat(box: Sandbox, message: Message) -> Message:
    return {"entry": entry(await box.files.stat(required_path(message)))}


async def _make_dir(box: Sandbox, message: Message) -> Message:
    path = required_path(message)
    if await box.files.exists(path):
        raise ConnectError("already_exists", f"{path} already exists")
    return {"entry": entry(await box.files.mkdir(path, parents=True))}


async def _move(box: Sandbox, message: Message) -> Message:
    info = await box.files.rename(required_path(message, "source"), required_path(message, "destination"))
    return {"entry": entry(info)}


async def _list_dir(box: Sandbox, message: Message) -> Message:
    depth = message.get("depth") or 1
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConnectError("invalid_argument", "depth must be a positive integer")
    return {"entries": [entry(info) for info in await box.files.list(required_path(message), depth)]}


async def _remove(box: Sandbox, message: Message) -> Message:
    await box.files.remove(required_path(message), recursive=True)
    return {}


routes = connect.unary_routes(
    "/filesystem.Filesystem/",
    {"Stat": _stat, "MakeDir": _make_dir, "Move": _move, "ListDir": _list_dir, "Remove": _remove},
    sandbox_of,
)


# ---------------------------------------------------------------- envd's HTTP API


def _error(exc: errors.EmberError) -> JSONResponse:
    # envd's error body; the SDK maps 400/401/404/507 to its own exceptions.
    return JSONResponse({"code": exc.status, "message": exc.message}, status_code=exc.status)


def _write_info(info: m.FileInfo) -> Message:
    return {"name": info.name, "type": "dir" if info.type == "dir" else "file", "path": info.path}


async def _parts(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_UPLOAD_CHUNK):
        yield chunk


async def upload(request: Request) -> Response:
    box = sandbox_of(request)
    path = request.query_params.get("path")
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            written = []
            async with request.form(max_part_size=1024 * 1024) as form:
                files = [part for _, part in form.multi_items() if isinstance(part, UploadFile)]
                if not files:
                    raise errors.InvalidRequestError("the multipart body holds no file")
                for part in files:
                    target = path if path and len(files) == 1 else part.filename
                    if not target:
                        raise errors.InvalidRequestError("a file part needs a path (filename or ?path=)")
                    written.append(_write_info(await box.files.write(sandbox_path(target), _parts(part))))
            return JSONResponse(written)
        if not path:
            raise errors.InvalidRequestError("an octet-stream upload needs ?path=")
        if request.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise errors.InvalidRequestError("compressed uploads are not supported")
        return JSONResponse([_write_info(await box.files.write(sandbox_path(path), request.stream()))])
    except errors.EmberError as exc:
        return _error(exc)


async def download(request: Request) -> Response:
    box = sandbox_of(request)
    path = request.query_params.get("path")
    try:
        if not path:
            raise errors.InvalidRequestError("?path= is required")
        path = sandbox_path(path)
        info = await box.files.stat(path)
        if info.type == "dir":
            raise errors.InvalidRequestError(f"{path} is a directory")
        chunks = box.files.read_stream(path)
        first = await anext(chunks, b"")  # a read error is an error response, not a cut stream
    except errors.EmberError as exc:
        return _error(exc)

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    headers = {"Content-Length": str(info.size), "Content-Disposition": f'attachment; filename="{info.name}"'}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


async def health(request: Request) -> Response:
    return Response(status_code=204)


http_routes: list[Any] = [
    Route("/files", download, methods=["GET"]),
    Route("/files", upload, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
]
