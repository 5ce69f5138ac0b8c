"""Files in a sandbox: streamed upload and download, listings, metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from ember.engine.sandbox import Sandbox
from ember.server.deps import sandbox
from ember.server.models import FileInfo, FileList, MakeDirectory, Rename, wire
from ember.server.openapi import (
    AUTH,
    BINARY_BODY,
    BODY,
    FILES,
    GUEST,
    INPUT,
    WRITES,
    binary_response,
    errors_of,
)

router = APIRouter(tags=["files"])
#: A path in the guest: absolute, or relative to /app.
GuestPath = Annotated[str, Query(min_length=1)]
_READ = errors_of(AUTH, INPUT, GUEST, FILES)
_WRITE = errors_of(AUTH, BODY, GUEST, WRITES)


@router.put(
    "/v1/sandboxes/{sandbox_id}/files", response_model=FileInfo, responses=_WRITE, openapi_extra=BINARY_BODY
)
async def upload(
    path: GuestPath, request: Request, mode: int | None = None, box: Sandbox = Depends(sandbox)
) -> FileInfo:
    return FileInfo(**wire(await box.files.write(path, request.stream(), mode=mode)))


@router.get(
    "/v1/sandboxes/{sandbox_id}/files", response_class=StreamingResponse, responses=_READ | binary_response()
)
async def download(path: GuestPath, box: Sandbox = Depends(sandbox)) -> StreamingResponse:
    info = await box.files.stat(path)
    chunks = box.files.read_stream(path)
    # Pull the first chunk now: a read error is then an error response, not a cut stream.
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    headers = {"Content-Length": str(info.size)} if info.type == "file" else {}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


@router.get("/v1/sandboxes/{sandbox_id}/files/list", response_model=FileList, responses=_READ)
async def list_files(path: GuestPath, depth: int = 1, box: Sandbox = Depends(sandbox)) -> FileList:
    return FileList(entries=[FileInfo(**wire(e)) for e in await box.files.list(path, depth)])


@router.get("/v1/sandboxes/{sandbox_id}/files/stat", response_model=FileInfo, responses=_READ)
async def stat(path: GuestPath, box: Sandbox = Depends(sandbox)) -> FileInfo:
    return FileInfo(**wire(await box.files.stat(path)))


@router.post("/v1/sandboxes/{sandbox_id}/files/mkdir", response_model=FileInfo, responses=_WRITE)
async def mkdir(body: MakeDirectory, box: Sandbox = Depends(sandbox)) -> FileInfo:
    return FileInfo(**wire(await box.files.mkdir(body.path, parents=body.parents)))


@router.delete(
    "/v1/sandboxes/{sandbox_id}/files", status_code=204, responses=errors_of(AUTH, INPUT, GUEST, WRITES)
)
async def remove(path: GuestPath, recursive: bool = False, box: Sandbox = Depends(sandbox)) -> Response:
    await box.files.remove(path, recursive=recursive)
    return Response(status_code=204)


@router.post("/v1/sandboxes/{sandbox_id}/files/rename", response_model=FileInfo, responses=_WRITE)
async def rename(body: Rename, box: Sandbox = Depends(sandbox)) -> FileInfo:
    return FileInfo(**wire(await box.files.rename(body.source, body.destination, overwrite=body.overwrite)))
