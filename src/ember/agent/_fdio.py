"""Awaiting raw non-blocking file descriptors (pipes, terminals, the virtio port)."""

from __future__ import annotations

import asyncio


async def wait_readable(fd: int) -> None:
    await _wait(fd, readable=True)


async def wait_writable(fd: int) -> None:
    await _wait(fd, readable=False)


async def _wait(fd: int, readable: bool) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    if readable:
        loop.add_reader(fd, ready)
    else:
        loop.add_writer(fd, ready)
    try:
        await future
    finally:
        if readable:
            loop.remove_reader(fd)
        else:
            loop.remove_writer(fd)
