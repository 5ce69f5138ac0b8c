"""The warm pool: sandboxes restored from a template ahead of time, handed out by create.

A pooled sandbox is a full restore (its own id, hostname, entropy and clock set
when it was restored) that waits, agent connected, in state ``pooled``: no key
owns it and no listing shows it. ``take`` hands one over in the time of a
dictionary pop, and a background task restores a replacement. Restores run one
at a time, so refilling never competes with users for more than one CPU.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ember import errors
from ember.engine.sandbox import Sandbox, SandboxState
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.engine")

RETRY_DELAY_S = 5.0


@dataclass
class PoolStats:
    """What the pool did for one template: hits, misses and how long refills take."""

    template: str
    target: int
    ready: int = 0
    hits: int = 0
    misses: int = 0
    refills: int = 0
    failures: int = 0
    refill_seconds: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=100))

    def as_dict(self) -> dict[str, object]:
        times = list(self.refill_seconds)
        return {
            "template": self.template,
            "target": self.target,
            "ready": self.ready,
            "hits": self.hits,
            "misses": self.misses,
            "refills": self.refills,
            "failures": self.failures,
            "refill_p50_s": statistics.median(times) if times else None,
            "refill_last_s": times[-1] if times else None,
        }


class WarmPool:
    """Keeps ``targets[template]`` ready sandboxes per template; see the module docstring."""

    def __init__(self, targets: dict[str, int], restore: Callable[[str], Awaitable[Sandbox]]) -> None:
        self._restore = restore
        self._ready: dict[str, collections.deque[Sandbox]] = {t: collections.deque() for t in targets}
        self._stats = {t: PoolStats(t, n) for t, n in targets.items()}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and any(s.target for s in self._stats.values()):
            self._task = asyncio.create_task(self._fill_forever(), name="warm-pool")

    def take(self, template: str) -> Sandbox | None:
        """A ready sandbox of ``template``, or None (a miss: the caller restores one itself)."""
        stats = self._stats.get(template)
        if stats is None:
            return None
        ready = self._ready[template]
        while ready:
            sandbox = ready.popleft()
            stats.ready = len(ready)
            self._wake.set()
            if sandbox.state is not SandboxState.POOLED:
                continue  # died while waiting (the reaper ends it); the filler replaces it
            stats.hits += 1
            return sandbox
        stats.misses += 1
        self._wake.set()
        return None

    def stats(self) -> list[dict[str, object]]:
        return [s.as_dict() for s in self._stats.values()]

    async def close(self) -> None:
        """Stop refilling; the pooled sandboxes are the manager's to end, with all the others."""
        await cancel_and_wait(self._task)
        self._task = None
        for ready in self._ready.values():
            ready.clear()

    async def _fill_forever(self) -> None:
        while True:
            self._wake.clear()
            worked = False
            for template, stats in self._stats.items():
                if len(self._ready[template]) < stats.target:
                    worked = True
                    await self._fill_one(template, stats)
            if not worked:
                await self._wake.wait()

    async def _fill_one(self, template: str, stats: PoolStats) -> None:
        started = time.perf_counter()
        try:
            sandbox = await self._restore(template)
        except errors.TemplateNotFoundError:
            # Not built (yet): look again later rather than spin.
            await asyncio.sleep(RETRY_DELAY_S)
            return
        except errors.EmberError as exc:
            stats.failures += 1
            log.warning("warm pool: restoring %s failed: %s", template, exc)
            await asyncio.sleep(RETRY_DELAY_S)
            return
        except Exception:
            # A bug, not a host problem: say so loudly, but keep the pool filling.
            stats.failures += 1
            log.exception("warm pool: restoring %s failed unexpectedly", template)
            await asyncio.sleep(RETRY_DELAY_S)
            return
        stats.refills += 1
        stats.refill_seconds.append(time.perf_counter() - started)
        self._ready[template].append(sandbox)
        stats.ready = len(self._ready[template])
