"""Ending the background tasks a component owns, the one way.

An owner that shuts down cancels its task and waits for it to end. The task's
own end is no news then (it was told to stop), but a cancellation of the owner
itself must still reach the owner: ``contextlib.suppress(CancelledError)`` around
the wait would swallow that too, and a failure the task ended with before it was
cancelled is logged rather than lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("ember")


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (None ones are skipped) and wait until every one has ended."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task, outcome in zip(running, await asyncio.gather(*running, return_exceptions=True), strict=True):
        if isinstance(outcome, Exception):
            log.warning("task %s had failed before it was stopped: %r", task.get_name(), outcome)
