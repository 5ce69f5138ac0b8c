"""Files in a sandbox (``sandbox.files``): streamed both ways, any size."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from ember.engine.channel import Chunk, Event
from ember.errors import PathNotFoundError
from ember.protocol import messages as m

if TYPE_CHECKING:
    from ember.engine.sandbox import Sandbox


class Files:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def write(
        self,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        append: bool = False,
        make_parents: bool = True,
    ) -> m.FileInfo:
        """Write a whole file; the old content stays until the last byte has arrived."""
        request = m.FileWrite(path=path, mode=mode, append=append, make_parents=make_parents)
        async with self._sandbox.agent_call() as agent:
            return m.FileInfo.from_wire(await agent.request(request, data))

    async def read(self, path: str) -> bytes:
        return b"".join([chunk async for chunk in self.read_stream(path)])

    async def read_stream(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive; an error (not found, ...) raises before the first.

        They come on the transfer disk when a lane of it is free (the guest sends a small
        file through the channel all the same).
        """
        async with self._sandbox.agent_call() as agent:
            lane = agent.transfer_lane()
            request = m.FileRead(path=path, offset=offset, length=length, extents=lane is not None)
            call = agent.start(request, lane)
            try:
                async for item in call:
                    if isinstance(item, Chunk):
                        yield item.data
                await call.result()
            finally:
                await call.cancel()

    async def list(self, path: str, depth: int = 1) -> list[m.FileInfo]:
        async with self._sandbox.agent_call() as agent:
            return m.FileListing.from_wire(await agent.request(m.FileList(path=path, depth=depth))).entries

    async def stat(self, path: str) -> m.FileInfo:
        async with self._sandbox.agent_call() as agent:
            return m.FileInfo.from_wire(await agent.request(m.FileStat(path=path)))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except PathNotFoundError:
            return False
        return True

    async def mkdir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> m.FileInfo:
        async with self._sandbox.agent_call() as agent:
            request = m.FileMkdir(path=path, parents=parents, exist_ok=exist_ok)
            return m.FileInfo.from_wire(await agent.request(request))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        async with self._sandbox.agent_call() as agent:
            await agent.request(m.FileRemove(path=path, recursive=recursive))

    async def rename(self, source: str, destination: str, *, overwrite: bool = True) -> m.FileInfo:
        async with self._sandbox.agent_call() as agent:
            request = m.FileRename(source=source, destination=destination, overwrite=overwrite)
            return m.FileInfo.from_wire(await agent.request(request))

    async def watch(
        self,
        path: str,
        on_change: Callable[[m.FileChange], Awaitable[None] | None],
        *,
        recursive: bool = False,
        on_start: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        """Report changes under the directory ``path`` until cancelled (or the directory goes)."""
        async with self._sandbox.agent_call() as agent:
            call = agent.start(m.FileWatch(path=path, recursive=recursive))
            try:
                async for item in call:
                    if not isinstance(item, Event):
                        continue
                    if item.name == "watching":
                        result = on_start() if on_start is not None else None
                    else:
                        result = on_change(m.FileChange.from_wire(item.data))
                    if inspect.isawaitable(result):
                        await result
                await call.result()
            finally:
                await call.cancel()
