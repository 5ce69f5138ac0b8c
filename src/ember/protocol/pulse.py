"""An edge-triggered wake-up for asyncio code on both ends of the agent channel."""

from __future__ import annotations

import asyncio
import contextlib


class Pulse:
    """Wakes every coroutine waiting on it when ``fire`` is called.

    Each waiter has its own future, so a cancelled waiter never disturbs the
    others, and waiting costs one future: this sits on every request's path.
    """

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout_s: float | None = None) -> None:
        if len(self._waiters) > 64:  # drop waiters that timed out or were cancelled
            self._waiters = [waiter for waiter in self._waiters if not waiter.done()]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if timeout_s is None:
            await waiter
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, timeout_s)
