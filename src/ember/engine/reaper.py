"""The reaper: ends sandboxes past their lifetime or idle time, and releases dead ones.

Once a second it looks at every sandbox: a dead one (its VM gone, its agent
broken) is ended with the reason it died of; one past its lifetime ends with
``timeout`` (or is paused, if it asked for that); one idle too long ends with
``idle_timeout``. Booting sandboxes are left to their create. Once an hour it
also prunes the store of sandboxes that ended more than a week ago: a daemon that
runs for weeks would otherwise keep every record it ever wrote.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ember import errors
from ember.engine import pauses
from ember.engine.sandbox import Sandbox, SandboxState
from ember.tasks import cancel_and_wait

if TYPE_CHECKING:
    from ember.engine.manager import SandboxManager

log = logging.getLogger("ember.engine")

REAPER_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0


class Reaper:
    """Owns the reaping task of one manager: ``start`` it, ``close`` it on shutdown."""

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="sandbox-reaper")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _forever(self) -> None:
        pruned_at = time.monotonic()  # the manager's start pruned
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            try:
                await self.reap()
                if time.monotonic() - pruned_at >= PRUNE_INTERVAL_S:
                    pruned_at = time.monotonic()
                    self._manager.store.prune()
            except Exception:
                log.exception("reaper pass failed")

    async def reap(self) -> None:
        """End sandboxes past their lifetime or idle time; release dead ones' resources."""
        now, monotonic = time.time(), time.monotonic()
        for sandbox in self._manager.live():
            record = sandbox.record
            reason = None
            if sandbox.state is SandboxState.DEAD:
                reason = record.end_reason or "dead"
            elif record.expires_at is not None and now >= record.expires_at:
                reason = "timeout"
            elif (
                record.idle_timeout_s is not None and monotonic - sandbox.last_active >= record.idle_timeout_s
            ):
                reason = "idle_timeout"
            if reason is not None and sandbox.state is not SandboxState.BOOTING:
                if reason == "timeout" and record.on_timeout == "pause" and await self._pause(sandbox):
                    continue
                log.info("ending sandbox %s: %s", sandbox.id, reason.splitlines()[0])
                await self._manager.end(sandbox, reason)

    async def _pause(self, sandbox: Sandbox) -> bool:
        try:
            await pauses.pause(self._manager, sandbox.id)
        except errors.EmberError as exc:
            log.warning("sandbox %s could not be paused at its timeout, so it ends: %s", sandbox.id, exc)
            return False
        log.info("paused sandbox %s at its timeout", sandbox.id)
        return True
