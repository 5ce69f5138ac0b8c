"""The host end of the agent channel: one client per sandbox, many requests at once.

Modelled on ``qemu.qmp``: the client owns the connection and its reader task;
each request gets a stream id and an ``AgentCall`` in the ``pending`` table; the
reader routes frames to their call and, when the connection dies, fails every
pending call with the same error. The guest is untrusted: anything it sends
that breaks the framing or the flow-control window closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from ember import errors
from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    DATA_CHUNK_BYTES,
    HOST_SYNC_MAGIC,
    INITIAL_WINDOW,
    NONCE_BYTES,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    SyncScanner,
    encode_credit,
    encode_frame,
    encode_message,
)
from ember.protocol.messages import Request
from ember.protocol.pulse import Pulse

log = logging.getLogger("ember.engine.channel")

_CREDIT_BATCH = INITIAL_WINDOW // 4
# Events are not flow-controlled; a guest flooding them must not grow host memory.
_MAX_QUEUED_EVENTS = 10_000
# Soon at first (a restored guest answers in 50-100 ms under TCG if its first
# preamble was not lost: retrying sooner only makes it reset twice), then once
# a second while a guest boots.
SYNC_RETRIES_S = (0.2, 0.4, 0.8)
SYNC_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Raw bytes from the guest: ``stream`` is "stdout", "stderr" or "data"."""

    stream: str
    data: bytes


_RAW_STREAMS = {FrameKind.STDOUT: "stdout", FrameKind.STDERR: "stderr", FrameKind.DATA: "data"}


class AgentCall:
    """One request in flight. Iterate it for events and output; ``result()`` ends it."""

    def __init__(self, client: AgentClient, stream_id: int) -> None:
        self.stream_id = stream_id
        self._client = client
        self._items: deque[Event | Chunk] = deque()
        self._pulse = Pulse()
        self._outcome: dict[str, Any] | None = None
        self._failure: errors.EmberError | None = None
        self._send_credit = INITIAL_WINDOW
        self._credit_pulse = Pulse()
        self._unacknowledged = 0
        self._outstanding = 0

    @property
    def finished(self) -> bool:
        return self._outcome is not None or self._failure is not None

    def __aiter__(self) -> AsyncIterator[Event | Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event | Chunk]:
        while True:
            if self._items:
                item = self._items.popleft()
                if isinstance(item, Chunk):
                    self._consumed(len(item.data))
                yield item
            elif self.finished:
                return
            else:
                await self._pulse.wait()

    async def result(self) -> dict[str, Any]:
        """The terminal result; output nobody iterated is drained and dropped."""
        async for _ in self:
            pass
        if self._failure is not None:
            raise self._failure
        assert self._outcome is not None
        return self._outcome

    async def send(self, data: bytes) -> None:
        """Body bytes for the request, paced by the guest's flow-control credit."""
        view = memoryview(data)
        while view:
            while self._send_credit <= 0:
                if self.finished:
                    self._raise_if_failed()
                    return
                await self._credit_pulse.wait()
            size = min(len(view), self._send_credit, DATA_CHUNK_BYTES)
            self._send_credit -= size
            await self._client._write(encode_frame(FrameKind.DATA, self.stream_id, bytes(view[:size])))
            view = view[size:]

    async def end(self) -> None:
        await self._client._write(encode_frame(FrameKind.END, self.stream_id))

    async def cancel(self) -> None:
        if not self.finished:
            with contextlib.suppress(errors.EmberError):
                await self._client._write(encode_frame(FrameKind.CANCEL, self.stream_id))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _consumed(self, size: int) -> None:
        self._outstanding -= size
        self._unacknowledged += size
        if self._unacknowledged >= _CREDIT_BATCH and not self.finished:
            self._client._write_nowait(encode_credit(self.stream_id, self._unacknowledged))
            self._unacknowledged = 0

    # Called by the client's reader.
    def _on_raw(self, stream: str, data: bytes) -> None:
        self._outstanding += len(data)
        if self._outstanding > INITIAL_WINDOW:
            raise ProtocolError(f"guest overran the flow-control window on stream {self.stream_id}")
        self._items.append(Chunk(stream, data))
        self._pulse.fire()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "event":
            name, data = message.get("event"), message.get("data")
            if not isinstance(name, str) or not isinstance(data, dict):
                raise ProtocolError("malformed event from the guest")
            if len(self._items) >= _MAX_QUEUED_EVENTS:
                raise ProtocolError(f"guest flooded stream {self.stream_id} with events")
            self._items.append(Event(name, data))
        elif kind == "result":
            result = message.get("result")
            if not isinstance(result, dict):
                raise ProtocolError("malformed result from the guest")
            self._outcome = result
            self._client._forget(self)
        elif kind == "error":
            code, text = message.get("code"), message.get("message")
            if not isinstance(code, str) or not isinstance(text, str):
                raise ProtocolError("malformed error from the guest")
            self._failure = errors.error_for(code, text)
            self._client._forget(self)
        else:
            raise ProtocolError(f"unknown message type {kind!r} from the guest")
        self._pulse.fire()
        self._credit_pulse.fire()

    def _on_credit(self, amount: int) -> None:
        self._send_credit += amount
        self._credit_pulse.fire()

    def _fail(self, error: errors.EmberError) -> None:
        if not self.finished:
            self._failure = error
        self._pulse.fire()
        self._credit_pulse.fire()


class _ChannelProtocol(asyncio.Protocol):
    """Hands bytes to the client as they arrive: no reader task, no extra loop hop."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._writable = asyncio.Event()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._client._protocol is self:
            self._client._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        # A connection the client already replaced must not fail the new one.
        if self._client._protocol is self:
            self._client._on_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


class AgentClient:
    """A connection to one guest agent over its unix socket."""

    def __init__(self, name: str = "agent") -> None:
        self.name = name
        self._transport: asyncio.Transport | None = None
        self._protocol: _ChannelProtocol | None = None
        self._pending: dict[int, AgentCall] = {}
        self._next_id = 1
        self._decoder = FrameDecoder()
        self._scanner = SyncScanner(AGENT_SYNC_MAGIC)
        self._nonce = b""
        self._synced: asyncio.Future[None] | None = None
        self._failure: errors.EmberError | None = None
        self.closed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._synced is not None and self._synced.done()

    async def open(self, socket_path: str) -> None:
        """Open the socket without syncing, for a restored guest whose state is not loaded yet.

        A restored guest's agent remembers its source's host connection. Opened
        (and taken by QEMU) before the state loads, the connection is all it ever
        sees; opened later, the guest may learn that its source's host left only
        after it answered the new sync, and drop the session it had just begun.
        """
        loop = asyncio.get_running_loop()
        self._protocol = None
        self._failure = None
        self.closed.clear()
        self._decoder.reset()
        self._scanner.reset()
        self._synced = loop.create_future()

        def make_protocol() -> _ChannelProtocol:
            self._protocol = _ChannelProtocol(self)
            return self._protocol

        try:
            transport, _ = await loop.create_unix_connection(make_protocol, socket_path)
        except OSError as exc:
            raise errors.AgentUnavailableError(f"{self.name}: cannot connect: {exc}") from exc
        self._transport = transport

    async def connect(self, socket_path: str) -> None:
        """Open the socket (unless ``open`` did) and sync with the agent; waits as long
        as the guest takes to boot.

        The preamble is repeated with a fresh nonce (``SYNC_RETRIES_S``, then every ``SYNC_RETRY_S``): bytes
        crossing virtio-serial while a previous connection closes can be lost,
        and a booting guest only starts reading once its agent is up. Only the
        reply to the latest nonce counts.
        """
        if self._transport is None:
            await self.open(socket_path)
        transport, synced = self._transport, self._synced
        assert transport is not None and synced is not None
        try:
            for attempt in itertools.count():
                if synced.done():
                    # The reply came as the wait timed out. Another sync now would
                    # reset the agent and its reply would land in the frame stream.
                    return
                self._nonce = secrets.token_bytes(NONCE_BYTES)
                transport.write(HOST_SYNC_MAGIC + self._nonce)
                wait_s = SYNC_RETRIES_S[attempt] if attempt < len(SYNC_RETRIES_S) else SYNC_RETRY_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(synced), wait_s)
                    return
        except BaseException:
            transport.abort()
            self._transport = None
            raise

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        self._protocol = None
        self._fail_all(errors.AgentUnavailableError(f"{self.name}: connection closed"))
        if transport is not None:
            transport.abort()
        self.closed.set()

    def start(self, request: Request) -> AgentCall:
        """Send a request and return its call; the caller iterates or awaits it."""
        if not self.connected:
            raise self._failure or errors.AgentUnavailableError(f"{self.name}: not connected")
        stream_id = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < 0xFFFFFFFF else 1
        call = AgentCall(self, stream_id)
        self._pending[stream_id] = call
        self._write_nowait(encode_message(stream_id, request.to_message()))
        return call

    async def request(
        self, request: Request, body: bytes | AsyncIterable[bytes] | None = None
    ) -> dict[str, Any]:
        """Send a request (and its body) and return its result, raising its error."""
        call = self.start(request)
        try:
            if request.has_body:
                if isinstance(body, bytes):
                    await call.send(body)
                elif body is not None:
                    async for chunk in body:
                        await call.send(chunk)
                await call.end()
            return await call.result()
        except BaseException:
            # The guest abandons it too: an interrupted upload leaves the old file.
            await call.cancel()
            raise

    def _forget(self, call: AgentCall) -> None:
        self._pending.pop(call.stream_id, None)

    def _write_nowait(self, frame: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise self._failure or errors.AgentUnavailableError(f"{self.name}: not connected")
        self._transport.write(frame)

    async def _write(self, frame: bytes) -> None:
        self._write_nowait(frame)
        assert self._protocol is not None
        await self._protocol.drain()
        if self._failure is not None:
            raise self._failure

    def _on_data(self, data: bytes) -> None:
        synced = self._synced
        if synced is None:
            return
        if not synced.done():
            found = self._scanner.feed(data)
            while found is not None and found[0] != self._nonce:
                found = self._scanner.feed(found[1])
            if found is None:
                return
            synced.set_result(None)
            data = found[1]
        try:
            for frame in self._decoder.feed(data):
                self._route(frame)
        except ProtocolError as exc:
            log.warning("%s: protocol violation from the guest: %s", self.name, exc)
            self._fail(errors.ProtocolError(f"{self.name}: {exc}"))

    def _on_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc else ""
        self._fail(errors.AgentUnavailableError(f"{self.name}: the agent channel closed{detail}"))

    def _fail(self, error: errors.EmberError) -> None:
        if self._failure is None:
            self._failure = error
        self._fail_all(error)
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self.closed.set()

    def _route(self, frame: Frame) -> None:
        if frame.stream_id == 0:
            raise ProtocolError(f"agent reported a connection error: {frame.payload[:500]!r}")
        call = self._pending.get(frame.stream_id)
        if call is None:
            return  # a call we cancelled or already finished
        if frame.kind == FrameKind.MESSAGE:
            call._on_message(frame.json())
        elif frame.kind in _RAW_STREAMS:
            call._on_raw(_RAW_STREAMS[frame.kind], frame.payload)
        elif frame.kind == FrameKind.CREDIT:
            call._on_credit(frame.credit())
        else:
            raise ProtocolError(f"the guest may not send {frame.kind.name} frames")

    def _fail_all(self, error: errors.EmberError) -> None:
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call._fail(error)
