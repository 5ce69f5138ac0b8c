"""``sandbox.files``: the sandbox's filesystem; paths are absolute or relative to /app.

Bodies stream both ways, so ``upload_file``/``download_file`` move files of any size
without holding them in memory. A write replaces the file only once the whole body
has arrived; a download appears locally only once complete.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ember import errors
from ember.client._async.transport import AsyncTransport
from ember.client._backends import CHUNK_BYTES, AsyncBody, aiter_body, aiter_file, asave
from ember.client._models import parse, parse_list
from ember.protocol.messages import FileInfo


class AsyncFiles:
    def __init__(self, transport: AsyncTransport, sandbox_path: str) -> None:
        self._transport = transport
        self._path = f"{sandbox_path}/files"

    async def write(self, path: str, data: AsyncBody, mode: int | None = None) -> FileInfo:
        """Write `data` (bytes, text, a binary file object or an iterator of chunks) to `path`.

        Parent directories are created. `mode` is the file's permission bits (``0o755``).
        """
        return await self._put(path, aiter_body(data), mode)

    async def upload_file(
        self, local_path: str | os.PathLike[str], path: str, mode: int | None = None
    ) -> FileInfo:
        """Copy a local file into the sandbox, streaming it from disk."""
        return await self._put(path, aiter_file(Path(local_path)), mode)

    async def _put(self, path: str, content: bytes | AsyncIterator[bytes], mode: int | None) -> FileInfo:
        params: dict[str, str | int] = {"path": path}
        if mode is not None:
            params["mode"] = mode
        data = await self._transport.json("PUT", self._path, params=params, content=content, waits=True)
        return parse(FileInfo, data)

    async def read(self, path: str) -> bytes:
        response = await self._transport.request("GET", self._path, params={"path": path}, waits=True)
        return response.content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def iter_read(self, path: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks, as they arrive."""
        async with self._transport.stream("GET", self._path, params={"path": path}, waits=True) as response:
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                yield chunk

    async def download_file(self, path: str, local_path: str | os.PathLike[str]) -> Path:
        """Copy a sandbox file to `local_path`, streaming it to disk; returns the local path."""
        target = Path(local_path)
        async with self._transport.stream("GET", self._path, params={"path": path}, waits=True) as response:
            await asave(response.aiter_bytes(CHUNK_BYTES), target)
        return target

    async def list(self, path: str = ".", depth: int = 1) -> builtins.list[FileInfo]:
        """The entries under directory `path`, `depth` levels deep."""
        data = await self._transport.json("GET", f"{self._path}/list", params={"path": path, "depth": depth})
        return parse_list(FileInfo, data, "entries")

    async def stat(self, path: str) -> FileInfo:
        return parse(FileInfo, await self._transport.json("GET", f"{self._path}/stat", params={"path": path}))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except errors.PathNotFoundError:
            return False
        return True

    async def mkdir(self, path: str, parents: bool = True) -> FileInfo:
        """Create a directory (and its parents); an existing directory is fine."""
        body = {"path": path, "parents": parents}
        return parse(FileInfo, await self._transport.json("POST", f"{self._path}/mkdir", json=body))

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Delete a file, or a directory (a non-empty one only with `recursive`)."""
        params = {"path": path, "recursive": str(recursive).lower()}
        await self._transport.request("DELETE", self._path, params=params)

    async def rename(self, source: str, destination: str, overwrite: bool = True) -> FileInfo:
        body = {"source": source, "destination": destination, "overwrite": overwrite}
        return parse(FileInfo, await self._transport.json("POST", f"{self._path}/rename", json=body))
