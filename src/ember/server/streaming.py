"""NDJSON streams: an engine call's output as lines, as it happens, then one final line.

The call runs as a task feeding a small bounded queue, so a slow client slows the
call down (and through it the guest) instead of filling the daemon's memory. If
the client goes away, the response generator is cancelled and takes the task
with it; the engine then cancels its agent call (processes in the guest run on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from ember.errors import EmberError
from ember.images import BuildProgress

log = logging.getLogger("ember.server")

Emit = Callable[[dict[str, Any]], Awaitable[None]]
NDJSON = "application/x-ndjson"
_QUEUE_ITEMS = 64
_PROGRESS_INTERVAL_S = 0.25
T = TypeVar("T")


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


async def _lines(run: Callable[[Emit], Awaitable[dict[str, Any]]]) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_ITEMS)

    async def work() -> None:
        try:
            final = await run(queue.put)
        except EmberError as exc:
            final = {"type": "error", "code": exc.code, "message": exc.message}
        except Exception as exc:
            log.exception("stream failed")
            final = {"type": "error", "code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        await queue.put(final | {"_final": True})

    task = asyncio.create_task(work())
    try:
        while True:
            item = await queue.get()
            final = item.pop("_final", False)
            yield _line(item)
            if final:
                break
        await task
    finally:
        task.cancel()


def ndjson_response(run: Callable[[Emit], Awaitable[dict[str, Any]]]) -> StreamingResponse:
    """Stream ``run``'s emitted items; its return value (or error) is the last line."""
    return StreamingResponse(_lines(run), media_type=NDJSON, headers={"X-Accel-Buffering": "no"})


class _StreamedProgress(BuildProgress):
    """A build's stages and progress as stream lines, from whichever thread the build runs in.

    Progress lines go out at most a few times a second; output lines of the build's
    tools are not sent (they are in its build log).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[dict[str, Any]]) -> None:
        self._loop = loop
        self._lines = lines
        self._done = 0
        self._total: int | None = None
        self._sent_at = 0.0

    def stage(self, name: str, total: int | None = None) -> None:
        self._done, self._total = 0, total
        self._put({"type": "stage", "name": name, "total": total})

    def advance(self, units: int = 1) -> None:
        self._done += units
        now = time.monotonic()
        if now - self._sent_at >= _PROGRESS_INTERVAL_S:
            self._sent_at = now
            self._put({"type": "progress", "done": self._done, "total": self._total})

    def _put(self, line: dict[str, Any]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._lines.put_nowait(line)
        else:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)


async def with_progress(build: Callable[[BuildProgress], Awaitable[T]], emit: Emit) -> T:
    """Run `build` with a progress receiver whose lines `emit` sends as they come."""
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(build(_StreamedProgress(asyncio.get_running_loop(), lines)))
    try:
        while not (task.done() and lines.empty()):
            getter = asyncio.create_task(lines.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await emit(getter.result())
            else:
                getter.cancel()
        return await task
    finally:
        task.cancel()
