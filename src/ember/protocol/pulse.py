"""An edge-triggered wake-up for asyncio code on both ends of the agent channel."""

from __future__ import annotations

import asyncio


class Pulse:
    """Wakes every coroutine waiting on it when ``fire`` is called (edge-triggered)."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self, timeout_s: float | None = None) -> None:
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._future), timeout_s)
        except TimeoutError:
            pass
