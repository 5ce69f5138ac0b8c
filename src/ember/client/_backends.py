"""The few things async and sync code do differently, written by hand in pairs.

Everything else in the sync SDK is generated from the async one (see
``scripts/unasync.py``), which renames each async name here to its sync twin:
``aemit`` -> ``emit``, ``AsyncBackground`` -> ``Background``, and so on. Keep each
pair side by side and identical in meaning.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")

CHUNK_BYTES = 1024 * 1024

#: What ``files.write`` accepts as content.
AsyncBody = bytes | bytearray | memoryview | str | BinaryIO | Iterable[bytes] | AsyncIterable[bytes]
Body = bytes | bytearray | memoryview | str | BinaryIO | Iterable[bytes]

# ---------------------------------------------------------------- callbacks


async def aemit(callback: Callable[[T], Any] | None, value: T) -> None:
    """Call a user callback; an async callback is awaited."""
    if callback is None:
        return
    outcome = callback(value)
    if inspect.isawaitable(outcome):
        await outcome


def emit(callback: Callable[[T], Any] | None, value: T) -> None:
    """Call a user callback."""
    if callback is not None:
        callback(value)


# ---------------------------------------------------------------- background work


class AsyncBackground:
    """One coroutine run as a task; its owner must ``join()`` it (which re-raises its error)."""

    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(work(), name=name)

    async def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the work to end (False: ``timeout_s`` passed first, and it goes on)."""
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            return False
        self._task.result()
        return True


class Background:
    """One function run on a daemon thread; its owner must ``join()`` it (which re-raises its error)."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # handed to join(), which re-raises it in the owner's thread
            self._error = exc

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the work to end (False: ``timeout_s`` passed first, and it goes on)."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return False
        if self._error is not None:
            raise self._error
        return True


# ---------------------------------------------------------------- blocking calls


async def arun_blocking(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking function off the event loop."""
    return await asyncio.to_thread(function, *args)


def run_blocking(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


# ---------------------------------------------------------------- request bodies and local files


def aiter_body(data: AsyncBody) -> bytes | AsyncIterator[bytes]:
    """Content for an upload: bytes as they are, anything else as a stream of chunks."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if hasattr(data, "read"):
        return _aiter_reader(data)  # type: ignore[arg-type]
    if isinstance(data, AsyncIterable):
        return aiter(data)
    return _aiter_sync(data)


def iter_body(data: Body) -> bytes | Iterator[bytes]:
    """Content for an upload: bytes as they are, anything else as a stream of chunks."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if hasattr(data, "read"):
        return _iter_reader(data)  # type: ignore[arg-type]
    return iter(data)


async def aiter_chunks(data: bytes) -> AsyncIterator[memoryview]:
    """`data` in pieces of CHUNK_BYTES, without copying it."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_BYTES):
        yield view[start : start + CHUNK_BYTES]


def iter_chunks(data: bytes) -> Iterator[memoryview]:
    """`data` in pieces of CHUNK_BYTES, without copying it."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_BYTES):
        yield view[start : start + CHUNK_BYTES]


async def _aiter_reader(reader: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(reader.read, CHUNK_BYTES):
        yield chunk


def _iter_reader(reader: BinaryIO) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK_BYTES):
        yield chunk


async def _aiter_sync(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def aiter_file(path: Path) -> AsyncIterator[bytes]:
    """A local file's bytes in chunks, read off the event loop."""
    with open(path, "rb") as reader:
        async for chunk in _aiter_reader(reader):
            yield chunk


def iter_file(path: Path) -> Iterator[bytes]:
    """A local file's bytes in chunks."""
    with open(path, "rb") as reader:
        yield from _iter_reader(reader)


async def asave(chunks: AsyncIterator[bytes], path: Path) -> None:
    """Write chunks to `path`; it appears only when complete, never half-written."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(partial, "wb") as writer:
            async for chunk in chunks:
                await asyncio.to_thread(writer.write, chunk)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def save(chunks: Iterator[bytes], path: Path) -> None:
    """Write chunks to `path`; it appears only when complete, never half-written."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(partial, "wb") as writer:
            for chunk in chunks:
                writer.write(chunk)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
