"""Driving one agent call: its streamed output collected, its deadline kept.

Both REPL cells and commands stream stdout and stderr as raw chunks; callers
want text as it is produced (``on_stdout``) and the whole text at the end. The
collected copy is capped so a command printing gigabytes cannot exhaust the
host; callbacks still see everything.
"""

from __future__ import annotations

import asyncio
import codecs
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ember import errors
from ember.engine.channel import AgentCall, AgentClient, Chunk, Event
from ember.protocol.messages import Request

T = TypeVar("T")

OutputCallback = Callable[[str], Awaitable[None] | None]
EventCallback = Callable[[Event], Awaitable[None] | None]
CAPTURE_LIMIT_CHARS = 16 * 1024 * 1024
# A wedged guest gets this long past an operation's own timeout before the host gives up.
HOST_GRACE_S = 15.0


async def _call(callback: Callable[..., Awaitable[None] | None] | None, value: object) -> None:
    if callback is None:
        return
    result = callback(value)
    if inspect.isawaitable(result):
        await result


class OutputCollector:
    """Drains an ``AgentCall``'s stdout/stderr into text, callbacks and a capped copy."""

    def __init__(
        self,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_event: EventCallback | None = None,
        capture: bool = True,
    ) -> None:
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._on_event = on_event
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in self._callbacks
        }
        self._parts: dict[str, list[str]] = {name: [] for name in self._callbacks}
        self._sizes = dict.fromkeys(self._callbacks, 0)
        self._capture = capture
        self.truncated = False

    async def drain(self, call: AgentCall) -> dict[str, object]:
        """Consume the call to its end and return its result (raising its error)."""
        async for item in call:
            if isinstance(item, Chunk):
                if item.stream in self._decoders:
                    await self._text(item.stream, self._decoders[item.stream].decode(item.data))
            else:
                await _call(self._on_event, item)
        for name, decoder in self._decoders.items():
            await self._text(name, decoder.decode(b"", final=True))
        return await call.result()

    async def _text(self, stream: str, text: str) -> None:
        if not text:
            return
        await _call(self._callbacks[stream], text)
        if not self._capture:
            return
        room = CAPTURE_LIMIT_CHARS - self._sizes[stream]
        if len(text) > room:
            text = text[: max(room, 0)]
            self.truncated = True
        if text:
            self._parts[stream].append(text)
            self._sizes[stream] += len(text)

    @property
    def stdout(self) -> str:
        return "".join(self._parts["stdout"])

    @property
    def stderr(self) -> str:
        return "".join(self._parts["stderr"])


async def with_deadline(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """The guest enforces timeouts; the host only steps in if the guest stops answering."""
    if timeout_s is None:
        return await awaitable
    limit = timeout_s + HOST_GRACE_S
    try:
        return await asyncio.wait_for(awaitable, limit)
    except TimeoutError:
        raise errors.ExecTimeoutError(
            f"the guest did not answer within {limit:.0f} s of a {timeout_s} s timeout"
        ) from None


async def drive(
    agent: AgentClient,
    request: Request,
    consume: Callable[[AgentCall], Awaitable[T]],
    timeout_s: float | None = None,
) -> T:
    """Start ``request`` and ``consume`` its call under the host's deadline for ``timeout_s``.

    Whatever interrupts it (the deadline, an error, the caller's cancellation)
    cancels the call in the guest too, so nothing runs on there for nobody.
    """
    call = agent.start(request)
    try:
        return await with_deadline(consume(call), timeout_s)
    except BaseException:
        await call.cancel()
        raise
