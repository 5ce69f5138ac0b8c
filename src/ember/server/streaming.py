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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from ember.errors import EmberError

log = logging.getLogger("ember.server")

Emit = Callable[[dict[str, Any]], Awaitable[None]]
NDJSON = "application/x-ndjson"
_QUEUE_ITEMS = 64


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
