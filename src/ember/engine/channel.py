"""The host end of the agent channel: one client per sandbox, many requests at once.

Modelled on ``qemu.qmp``: the client owns the connection and its reader task;
each request gets a stream id and an ``AgentCall`` in the ``pending`` table; the
reader routes frames to their call and, when the connection dies, fails every
pending call with the same error.

The guest is untrusted (its code runs as root and can write to the channel), so
what it sends costs only its own sandbox. The bytes come in through a
``GuestReader`` (bounded buffers, a slice per loop turn, a share of the CPU);
per call, raw output is held to the flow-control window, and queued items and
events to fixed limits; frames for no pending call get a small allowance, and a
cancelled call's late output the rest of its window. Anything past that, or
that breaks the framing, is a protocol violation: the connection closes, every
pending call fails with ``ProtocolError`` and ``on_violation`` tells the owner
(the sandbox, which then dies with that reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ember import errors
from ember.engine._reader import GuestReader
from ember.engine.extents import Lane, TransferDisk
from ember.protocol.extents import MIN_EXTENT_BODY_BYTES, SLOT_BYTES, Extent
from ember.protocol.framing import (
    DATA_CHUNK_BYTES,
    HOST_SYNC_MAGIC,
    INITIAL_WINDOW,
    MAX_FRAME_BYTES,
    NONCE_BYTES,
    Frame,
    FrameKind,
    ProtocolError,
    encode_credit,
    encode_extent,
    encode_frame,
    encode_message,
)
from ember.protocol.messages import Request
from ember.protocol.pulse import Pulse
from ember.protocol.window import ReceiveWindow, SendWindow
from ember.protocol.wire import WireError

log = logging.getLogger("ember.engine.channel")

# Events are not flow-controlled; a guest flooding them must not grow host memory.
# The agent's events are small (a pid, a file's info, a change), so these are far
# above what an honest guest queues even for a consumer that has stalled.
_MAX_QUEUED_EVENTS = 10_000
_MAX_QUEUED_EVENT_BYTES = 1024 * 1024
_MAX_EVENT_BYTES = 64 * 1024
# Raw output is held to the window in bytes; this bounds the per-item overhead
# too (adjacent chunks of one stream are merged, so only alternating streams
# queue many items: 64 bytes an item on average before the window is full).
_MAX_QUEUED_ITEMS = 65_536
# Frames for no pending call: a cancelled call's late output is legitimate, up to
# what the rest of its window and its last message hold; anything else gets a
# small allowance per connection. Past either, the guest is flooding.
_CANCELLED_ALLOWANCE_BYTES = INITIAL_WINDOW + MAX_FRAME_BYTES
_CANCELLED_ALLOWANCE_FRAMES = 65_536
_STRAY_ALLOWANCE_BYTES = 64 * 1024
_STRAY_ALLOWANCE_FRAMES = 1024
_MAX_CANCELLED = 1024
# Soon at first (a restored guest answers in 50-100 ms under TCG if its first
# preamble was not lost: retrying sooner only makes it reset twice), then once
# a second while a guest boots.
SYNC_RETRIES_S = (0.2, 0.4, 0.8)
SYNC_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any]
    size_bytes: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Raw bytes from the guest: ``stream`` is "stdout", "stderr" or "data"."""

    stream: str
    data: bytes


_RAW_STREAMS = {FrameKind.STDOUT: "stdout", FrameKind.STDERR: "stderr", FrameKind.DATA: "data"}


class _Run:
    """Raw bytes of one stream waiting for the consumer: adjacent frames merge into one."""

    __slots__ = ("data", "stream")

    def __init__(self, stream: str, data: bytes) -> None:
        self.stream = stream
        self.data: bytes | bytearray = data


@dataclass(slots=True)
class _Allowance:
    """What a guest may still send to a stream nobody waits for, in bytes and in frames.

    A cancelled call's transfer lane waits here for the guest's last word on it: until
    then the guest may still be writing its extents, and no other call may have them.
    """

    bytes_left: int
    frames_left: int
    lane: Lane | None = None

    def charge(self, size: int) -> bool:
        self.bytes_left -= size
        self.frames_left -= 1
        return self.bytes_left >= 0 and self.frames_left >= 0


class AgentCall:
    """One request in flight. Iterate it for events and output; ``result()`` ends it.

    A call with a transfer lane moves its body, or its output, as extents of the
    transfer disk (``ember.engine.extents``); the lane is given back when the call
    is over, and for its output, once the consumer has read it.
    """

    def __init__(
        self, client: AgentClient, stream_id: int, lane: Lane | None = None, lane_output: bool = False
    ) -> None:
        self.stream_id = stream_id
        self._client = client
        self._lane = lane
        #: The lane carries the guest's output (a download), not the host's body.
        self._lane_output = lane_output
        self._items: deque[Event | _Run | Extent] = deque()
        self._queued_events = 0
        self._queued_event_bytes = 0
        self._pulse = Pulse()
        self._outcome: dict[str, Any] | None = None
        self._failure: errors.EmberError | None = None
        self._body_window = SendWindow(stream_id)
        self._output_window = ReceiveWindow(stream_id)

    @property
    def finished(self) -> bool:
        return self._outcome is not None or self._failure is not None

    def __aiter__(self) -> AsyncIterator[Event | Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event | Chunk]:
        while True:
            if self._items:
                item = self._items.popleft()
                if isinstance(item, _Run):
                    self._consumed(len(item.data))
                    yield Chunk(item.stream, bytes(item.data))
                elif isinstance(item, Extent):
                    data = self._read_extent(item)
                    if data is not None:
                        yield Chunk("data", data)
                else:
                    self._queued_events -= 1
                    self._queued_event_bytes -= item.size_bytes
                    yield item
            elif self.finished:
                self._release_lane()
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

    async def send_body(self, body: bytes | AsyncIterable[bytes]) -> None:
        """The request's whole body: on the transfer disk if the call has a lane, else as DATA
        frames (the caller ends it with ``end``)."""
        if self._lane is not None:
            await self._send_extents(_chunks(body))
        else:
            async for chunk in _chunks(body):
                await self.send(chunk)

    async def _send_extents(self, body: AsyncIterable[bytes]) -> None:
        """Fill the lane's slots with the body, lending each to the guest as it fills."""
        lane = self._lane
        assert lane is not None
        slot, filled = None, 0
        async for chunk in body:
            view = memoryview(chunk)
            while view:
                if slot is None:
                    slot, filled = await lane.hold(), 0
                    if slot is None:  # the call ended while this waited for a slot
                        self._raise_if_failed()
                        return
                if lane.released:  # the call ended while this waited for the body
                    self._raise_if_failed()
                    return
                size = min(len(view), SLOT_BYTES - filled)
                try:
                    lane.write(slot, filled, view[:size])
                except OSError as exc:
                    what = f"{self._client.name}: writing the transfer disk failed: {exc}"
                    raise errors.IOError(what) from exc
                filled, view = filled + size, view[size:]
                if filled == SLOT_BYTES:
                    await self._lend(slot, filled)
                    slot = None
        if slot is not None:
            await self._lend(slot, filled)

    async def _lend(self, offset: int, length: int) -> None:
        assert self._lane is not None
        self._lane.lend(offset, length)
        await self._client._write(encode_extent(self.stream_id, offset, length))

    def _lend_all(self) -> None:
        """Every slot of the lane goes to the guest to fill with output."""
        assert self._lane is not None
        while (offset := self._lane.holds_any()) is not None:
            self._lane.lend(offset, SLOT_BYTES)
            self._client._write_nowait(encode_extent(self.stream_id, offset, SLOT_BYTES))

    def _read_extent(self, extent: Extent) -> bytes | None:
        """The output bytes of an extent the guest filled (None once the call failed: its
        lane is gone), and the slot goes back to the guest."""
        lane = self._lane
        if lane is None:
            return None
        try:
            data = lane.read(extent.offset, extent.length)
        except OSError as exc:
            raise errors.IOError(f"{self._client.name}: reading the transfer disk failed: {exc}") from exc
        lane.restore(extent.offset)
        if not self.finished:
            self._lend_all()
        return data

    def _release_lane(self) -> None:
        lane, self._lane = self._lane, None
        if lane is not None:
            lane.release()

    async def send(self, data: bytes) -> None:
        """Body bytes for the request, paced by the guest's flow-control credit."""
        view = memoryview(data)
        while view:
            size = await self._body_window.acquire(min(len(view), DATA_CHUNK_BYTES))
            if not size:  # the call ended while this waited for credit
                self._raise_if_failed()
                return
            await self._client._write(encode_frame(FrameKind.DATA, self.stream_id, bytes(view[:size])))
            view = view[size:]

    async def end(self) -> None:
        await self._client._write(encode_frame(FrameKind.END, self.stream_id))

    async def cancel(self) -> None:
        """Abandon the call: the guest is told to stop, and what it still sends is dropped."""
        if self.finished:
            self._release_lane()
            return
        lane, self._lane = self._lane, None
        self._client._abandon(self, lane)
        self._items.clear()
        self._fail(errors.CancelledError(f"call {self.stream_id} cancelled by the host"))
        with contextlib.suppress(errors.EmberError):
            await self._client._write(encode_frame(FrameKind.CANCEL, self.stream_id))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _consumed(self, size: int) -> None:
        credit = self._output_window.consume(size)
        if credit and not self.finished:
            self._client._write_nowait(encode_credit(self.stream_id, credit))

    # Called by the client's reader.
    def _on_raw(self, stream: str, data: bytes) -> None:
        if not data:
            raise ProtocolError(f"it sent an empty {stream} frame on stream {self.stream_id}")
        self._output_window.receive(len(data))
        last = self._items[-1] if self._items else None
        if (
            not isinstance(last, _Run)
            or last.stream != stream
            or len(last.data) + len(data) > DATA_CHUNK_BYTES
        ):
            self._queue(_Run(stream, data))
        else:
            if isinstance(last.data, bytes):
                last.data = bytearray(last.data)
            last.data += data
        self._pulse.fire()

    def _queue(self, item: Event | _Run) -> None:
        if len(self._items) >= _MAX_QUEUED_ITEMS:
            raise ProtocolError(f"it queued more than {_MAX_QUEUED_ITEMS} items on stream {self.stream_id}")
        self._items.append(item)

    def _on_message(self, message: dict[str, Any], size_bytes: int) -> None:
        kind = message.get("type")
        if kind == "event":
            name, data = message.get("event"), message.get("data")
            if not isinstance(name, str) or not isinstance(data, dict):
                raise ProtocolError(f"it sent a malformed event on stream {self.stream_id}")
            if size_bytes > _MAX_EVENT_BYTES:
                raise ProtocolError(f"it sent an event of {size_bytes} bytes on stream {self.stream_id}")
            if (
                self._queued_events >= _MAX_QUEUED_EVENTS
                or self._queued_event_bytes + size_bytes > _MAX_QUEUED_EVENT_BYTES
            ):
                raise ProtocolError(f"it flooded stream {self.stream_id} with events")
            self._queue(Event(name, data, size_bytes))
            self._queued_events += 1
            self._queued_event_bytes += size_bytes
        elif kind == "result":
            result = message.get("result")
            if not isinstance(result, dict):
                raise ProtocolError(f"it sent a malformed result on stream {self.stream_id}")
            self._outcome = result
            self._client._forget(self)
        elif kind == "error":
            code, text = message.get("code"), message.get("message")
            if not isinstance(code, str) or not isinstance(text, str):
                raise ProtocolError(f"it sent a malformed error on stream {self.stream_id}")
            self._failure = errors.error_for(code, text)
            self._client._forget(self)
        else:
            raise ProtocolError(f"it sent a message of unknown type {kind!r} on stream {self.stream_id}")
        self._pulse.fire()
        if self.finished:
            self._body_window.close()
            if not self._lane_output:
                self._release_lane()

    def _on_credit(self, amount: int) -> None:
        # Credit returns what the guest consumed of what the host sent: never more.
        self._body_window.grant(amount)

    def _on_extent(self, offset: int, length: int) -> None:
        """The guest gives back an extent it was lent: filled with output, or read (a body's)."""
        if self._lane is None:
            raise ProtocolError(f"it sent an extent on stream {self.stream_id}, which has no transfer lane")
        self._lane.take_back(offset, length)
        if self._lane_output:
            self._queue(Extent(offset, length))
            self._pulse.fire()
        else:
            self._lane.restore(offset)

    def _fail(self, error: errors.EmberError) -> None:
        if not self.finished:
            self._failure = error
        self._pulse.fire()
        self._body_window.close()
        self._release_lane()


class _ChannelProtocol(asyncio.Protocol):
    """Hands bytes to the client as they arrive: no reader task, no extra loop hop."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._client._protocol is self:
            self._client._reader.start(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        if self._client._protocol is self:
            self._client._reader.feed(data)

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


class ChannelState(enum.Enum):
    """Where an ``AgentClient``'s connection is; ``AgentClient._enter`` moves it."""

    IDLE = "idle"  # no connection (never opened, or an open that failed)
    OPENING = "opening"  # the socket is connecting
    SYNCING = "syncing"  # open: the agent's answer to the sync preamble has not come yet
    CONNECTED = "connected"  # requests may start
    FAILED = "failed"  # the connection died or the guest broke the protocol (``_failure`` says which)
    CLOSED = "closed"  # its owner closed it


_S = ChannelState
_TRANSITIONS: dict[ChannelState, frozenset[ChannelState]] = {
    _S.IDLE: frozenset({_S.OPENING, _S.CLOSED}),
    _S.OPENING: frozenset({_S.SYNCING, _S.IDLE, _S.FAILED, _S.CLOSED}),
    _S.SYNCING: frozenset({_S.CONNECTED, _S.FAILED, _S.CLOSED}),
    _S.CONNECTED: frozenset({_S.FAILED, _S.CLOSED}),
    _S.FAILED: frozenset({_S.OPENING, _S.CLOSED}),
    _S.CLOSED: frozenset({_S.OPENING, _S.CLOSED}),
}
#: A connection that is (being) made: the only states in which it can fail.
_LIVE = frozenset({_S.OPENING, _S.SYNCING, _S.CONNECTED})


class AgentClient:
    """A connection to one guest agent over its unix socket.

    ``on_violation(reason)`` is called once when the guest breaks the protocol,
    before the pending calls fail, with a reason fit for the sandbox's end.
    ``closed`` is set while the connection is failed or closed.
    """

    def __init__(
        self,
        name: str = "agent",
        on_violation: Callable[[str], None] | None = None,
        transfer_disk: Path | None = None,
    ) -> None:
        self.name = name
        self.transfer_disk = transfer_disk
        self._disk: TransferDisk | None = None
        self.state = ChannelState.IDLE
        self.closed = asyncio.Event()
        self._on_violation = on_violation
        self._state_changed = Pulse()
        self._transport: asyncio.Transport | None = None
        self._protocol: _ChannelProtocol | None = None
        self._failure: errors.EmberError | None = None
        self._pending: dict[int, AgentCall] = {}
        self._cancelled: dict[int, _Allowance] = {}
        self._strays = _Allowance(_STRAY_ALLOWANCE_BYTES, _STRAY_ALLOWANCE_FRAMES)
        self._next_id = 1
        self._reader = GuestReader(self._on_synced, self._route, self._on_broken)

    @property
    def connected(self) -> bool:
        return self.state is ChannelState.CONNECTED

    def _enter(self, state: ChannelState) -> None:
        """The one way to change state; a move the connection's life does not allow is a host bug."""
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(
                f"{self.name}: the agent channel cannot go from {self.state.value} to {state.value}"
            )
        self.state = state
        if state in (ChannelState.FAILED, ChannelState.CLOSED):
            self.closed.set()
        else:
            self.closed.clear()
        self._state_changed.fire()

    def _require(self, state: ChannelState) -> None:
        """The guard for operations: what ended the connection, or why it is not ready."""
        if self.state is not state:
            raise self._failure or errors.AgentUnavailableError(
                f"{self.name}: the agent channel is {self.state.value}, not {state.value}"
            )

    async def open(self, socket_path: str) -> None:
        """Open the socket without syncing, for a restored guest whose state is not loaded yet.

        A restored guest's agent remembers its source's host connection. Opened
        (and taken by QEMU) before the state loads, the connection is all it ever
        sees; opened later, the guest may learn that its source's host left only
        after it answered the new sync, and drop the session it had just begun.
        """
        self._enter(ChannelState.OPENING)
        self._protocol = None
        self._failure = None
        self._cancelled.clear()
        self._close_disk()
        self._strays = _Allowance(_STRAY_ALLOWANCE_BYTES, _STRAY_ALLOWANCE_FRAMES)

        def make_protocol() -> _ChannelProtocol:
            self._protocol = _ChannelProtocol(self)
            return self._protocol

        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_unix_connection(make_protocol, socket_path)
        except BaseException as exc:
            if self.state is ChannelState.OPENING:
                self._enter(ChannelState.IDLE)
            if isinstance(exc, OSError):
                raise errors.AgentUnavailableError(f"{self.name}: cannot connect: {exc}") from exc
            raise
        if self.state is not ChannelState.OPENING:  # closed, or lost, while it connected
            transport.abort()
            self._require(ChannelState.OPENING)
        self._transport = transport
        if self.transfer_disk is not None:
            try:
                self._disk = TransferDisk(self.transfer_disk)
            except OSError as exc:  # files still move, through the channel
                log.warning("%s: no transfer disk (%s): files go through the channel", self.name, exc)
        self._enter(ChannelState.SYNCING)

    async def connect(self, socket_path: str) -> None:
        """Open the socket (unless ``open`` did) and sync with the agent; waits as long
        as the guest takes to boot.

        The preamble is repeated with a fresh nonce (``SYNC_RETRIES_S``, then every ``SYNC_RETRY_S``): bytes
        crossing virtio-serial while a previous connection closes can be lost,
        and a booting guest only starts reading once its agent is up. Only the
        reply to the latest nonce counts. A connection that dies or breaks the
        protocol first ends the wait with its error.
        """
        if self.state is not ChannelState.SYNCING:
            await self.open(socket_path)
        transport = self._transport
        assert transport is not None
        try:
            for attempt in itertools.count():
                # Once answered (perhaps as the wait timed out), no other sync: it would
                # reset the agent, and its reply would land in the frame stream.
                if self.state is not ChannelState.SYNCING:
                    break
                nonce = secrets.token_bytes(NONCE_BYTES)
                self._reader.expect(nonce)
                transport.write(HOST_SYNC_MAGIC + nonce)
                wait_s = SYNC_RETRIES_S[attempt] if attempt < len(SYNC_RETRIES_S) else SYNC_RETRY_S
                await self._state_changed.wait(wait_s)
            self._require(ChannelState.CONNECTED)
        except BaseException:
            # Cancelled (the owner's deadline) or failed: the half-made connection goes.
            if self.state in _LIVE:
                self._fail(errors.AgentUnavailableError(f"{self.name}: the sync was abandoned"))
            raise

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        self._protocol = None
        self._reader.stop()
        self._fail_all(errors.AgentUnavailableError(f"{self.name}: connection closed"))
        self._close_disk()
        if transport is not None:
            transport.abort()
        self._enter(ChannelState.CLOSED)

    def _close_disk(self) -> None:
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()

    def transfer_lane(self) -> Lane | None:
        """A lane of the transfer disk for one call that moves a file, if one is free."""
        return self._disk.lane() if self._disk is not None and self.connected else None

    def start(self, request: Request, lane: Lane | None = None) -> AgentCall:
        """Send a request and return its call; the caller iterates or awaits it.

        With a ``lane`` (``transfer_lane``), the request's body, or its output when it
        has none, moves on the transfer disk: for output, the lane's slots are lent to
        the guest at once. The lane is given back if the request cannot be sent.
        """
        try:
            return self._start(request, lane)
        except BaseException:
            if lane is not None:
                lane.release()
            raise

    def _start(self, request: Request, lane: Lane | None) -> AgentCall:
        self._require(ChannelState.CONNECTED)
        stream_id = self._next_id
        try:
            frame = encode_message(stream_id, request.to_message())
        except WireError as exc:
            raise errors.InvalidRequestError(f"the request cannot be sent to the guest: {exc}") from None
        except ProtocolError as exc:
            raise errors.PayloadTooLargeError(
                f"the request is too large for the agent channel ({exc})"
            ) from None
        self._next_id = self._next_id + 1 if self._next_id < 0xFFFFFFFF else 1
        call = AgentCall(self, stream_id, lane, lane_output=not request.has_body)
        self._pending[stream_id] = call
        self._write_nowait(frame)
        if lane is not None and not request.has_body:
            call._lend_all()
        return call

    async def request(
        self, request: Request, body: bytes | AsyncIterable[bytes] | None = None
    ) -> dict[str, Any]:
        """Send a request (and its body) and return its result, raising its error.

        A large body of a request that moves a file goes on the transfer disk when a
        lane is free.
        """
        lane = None
        if request.has_body and request.bulk and body is not None:
            body, large = await _measure(body, MIN_EXTENT_BODY_BYTES)
            lane = self.transfer_lane() if large else None
        call = self.start(request, lane)
        try:
            if request.has_body:
                if body is not None:
                    await call.send_body(body)
                await call.end()
            return await call.result()
        except BaseException:
            # The guest abandons it too: an interrupted upload leaves the old file.
            await call.cancel()
            raise

    def _forget(self, call: AgentCall) -> None:
        self._pending.pop(call.stream_id, None)

    def _abandon(self, call: AgentCall, lane: Lane | None) -> None:
        """A cancelled call: what the guest still sends for it is counted, then dropped; its
        lane waits for the guest's last message on it."""
        if self._pending.pop(call.stream_id, None) is None:
            if lane is not None:
                lane.release()
            return
        if len(self._cancelled) >= _MAX_CANCELLED:  # the oldest are long over
            oldest = self._cancelled.pop(next(iter(self._cancelled)))
            if oldest.lane is not None:
                oldest.lane.release()
        self._cancelled[call.stream_id] = _Allowance(
            _CANCELLED_ALLOWANCE_BYTES, _CANCELLED_ALLOWANCE_FRAMES, lane
        )

    def _write_nowait(self, frame: bytes) -> None:
        self._require(ChannelState.CONNECTED)
        assert self._transport is not None
        if self._transport.is_closing():  # it died; connection_lost is a loop turn away
            raise errors.AgentUnavailableError(f"{self.name}: the agent channel is closing")
        self._transport.write(frame)

    async def _write(self, frame: bytes) -> None:
        self._write_nowait(frame)
        assert self._protocol is not None
        await self._protocol.drain()
        self._require(ChannelState.CONNECTED)

    def _on_synced(self) -> None:
        self._enter(ChannelState.CONNECTED)

    def _on_broken(self, exc: ProtocolError) -> None:
        # Once per connection: the reader reads nothing more of it after this.
        reason = f"the guest broke the agent protocol: {exc}"
        log.warning("%s: %s", self.name, reason)
        if self._on_violation is not None:
            self._on_violation(reason)
        self._fail(errors.ProtocolError(f"{self.name}: {reason}"))

    def _on_lost(self, exc: Exception | None) -> None:
        self._reader.flush()
        if self.state in _LIVE:  # else what it had sent broke the protocol, or its owner closed it
            detail = f": {exc}" if exc else ""
            self._fail(errors.AgentUnavailableError(f"{self.name}: the agent channel closed{detail}"))

    def _fail(self, error: errors.EmberError) -> None:
        """The connection is over: every pending call and a waiting ``connect`` get ``error``."""
        self._enter(ChannelState.FAILED)
        self._failure = error
        self._reader.stop()
        self._fail_all(error)
        self._close_disk()
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def _route(self, frame: Frame) -> None:
        if frame.stream_id == 0:
            raise ProtocolError(f"the agent reported a connection error: {frame.payload[:500]!r}")
        if frame.kind not in _GUEST_KINDS:
            raise ProtocolError(f"it sent a {frame.kind.name} frame, which only the host may send")
        call = self._pending.get(frame.stream_id)
        if call is None:
            self._charge_stray(frame)
        elif frame.kind == FrameKind.MESSAGE:
            call._on_message(frame.json(), len(frame.payload))
        elif frame.kind == FrameKind.CREDIT:
            call._on_credit(frame.credit())
        elif frame.kind == FrameKind.EXTENT:
            call._on_extent(*frame.extent())
        else:
            call._on_raw(_RAW_STREAMS[frame.kind], frame.payload)

    def _charge_stray(self, frame: Frame) -> None:
        """A frame for no pending call: a cancelled call's late output, or a flood."""
        allowance = self._cancelled.get(frame.stream_id)
        if allowance is not None:
            if not allowance.charge(len(frame.payload)):
                raise ProtocolError(
                    f"it sent more to stream {frame.stream_id} after its cancel than its window allows"
                )
            # Its last message: the guest is done with the call's extents.
            if (
                allowance.lane is not None
                and frame.kind == FrameKind.MESSAGE
                and frame.json().get("type") in ("result", "error")
            ):
                allowance.lane.release()
                allowance.lane = None
        elif not self._strays.charge(len(frame.payload)):
            raise ProtocolError(
                f"it sent more than {_STRAY_ALLOWANCE_FRAMES} frames or {_STRAY_ALLOWANCE_BYTES} bytes"
                " for streams with no call waiting"
            )

    def _fail_all(self, error: errors.EmberError) -> None:
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call._fail(error)


_GUEST_KINDS = frozenset({*_RAW_STREAMS, FrameKind.MESSAGE, FrameKind.CREDIT, FrameKind.EXTENT})


async def _chunks(body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        yield body
    else:
        async for chunk in body:
            yield chunk


async def _measure(
    body: bytes | AsyncIterable[bytes], limit_bytes: int
) -> tuple[bytes | AsyncIterable[bytes], bool]:
    """The body as it was (a stream's first chunks read ahead), and whether it holds at
    least ``limit_bytes``."""
    if isinstance(body, bytes):
        return body, len(body) >= limit_bytes
    chunks = aiter(body)
    head: list[bytes] = []
    size = 0
    async for chunk in chunks:
        head.append(chunk)
        size += len(chunk)
        if size >= limit_bytes:
            break

    async def rejoined() -> AsyncIterator[bytes]:
        for chunk in head:
            yield chunk
        if size >= limit_bytes:
            async for chunk in chunks:
                yield chunk

    return rejoined(), size >= limit_bytes
