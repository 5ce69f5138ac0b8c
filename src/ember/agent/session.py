"""One host connection: frames in, requests dispatched as tasks, frames out.

The session owns the decoder, the per-request contexts and the single writer task.
A host disconnect (EOF on the port) or a new sync preamble ends the session's
requests: their tasks are cancelled and nothing they send afterwards reaches the
new connection. Processes they started keep running; the host reattaches to them.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from ember.agent._errors import AgentError, from_os_error
from ember.protocol.codes import ErrorCode
from ember.protocol.extents import Extent
from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    DATA_CHUNK_BYTES,
    HOST_SYNC_MAGIC,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    SyncScanner,
    encode_credit,
    encode_extent,
    encode_frame,
    encode_message,
)
from ember.protocol.messages import (
    Request,
    error_message,
    event_message,
    parse_request,
    result_message,
)
from ember.protocol.pulse import Pulse
from ember.protocol.window import ReceiveWindow, SendWindow
from ember.protocol.wire import WireError, WireModel

log = logging.getLogger("ember.agent")


class Port(Protocol):
    def start(self, on_data: Callable[[bytes], None], on_disconnect: Callable[[], None]) -> None: ...
    def write(self, data: bytes) -> None: ...
    def discard_pending(self) -> None: ...


Handler = Callable[["RequestContext", Request], Awaitable[WireModel | None]]


class RequestContext:
    """What a handler sees of its request's stream: send events and data, read its body.

    A request that moves a file (``bulk``) may have its body come as extents of the
    transfer disk, or be lent extents to fill with its output (``ember.protocol.extents``).
    """

    def __init__(self, session: Session, stream_id: int, expects_body: bool, bulk: bool = False) -> None:
        self.stream_id = stream_id
        self._session = session
        self._generation = session.generation
        self._output_window = SendWindow(stream_id)
        self._expects_body = expects_body
        self._bulk = bulk
        self._body: deque[bytes | Extent] = deque()
        self._lent: deque[Extent] = deque()
        self._lent_pulse = Pulse()
        self._body_ended = False
        self._body_pulse = Pulse()
        self._body_window = ReceiveWindow(stream_id)
        self.task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self._generation == self._session.generation

    def event(self, name: str, data: WireModel | dict[str, Any] | None = None) -> None:
        self._send(encode_message(self.stream_id, event_message(name, data)))

    async def stdout(self, data: bytes) -> None:
        await self._send_raw(FrameKind.STDOUT, data)

    async def stderr(self, data: bytes) -> None:
        await self._send_raw(FrameKind.STDERR, data)

    async def data(self, data: bytes) -> None:
        await self._send_raw(FrameKind.DATA, data)

    async def body(self) -> AsyncIterator[bytes | Extent]:
        """The request's DATA frames (and extents) until the host's END, returning credit as
        they are used: an extent's, once the handler asks for the next piece."""
        while True:
            if self._body:
                chunk = self._body.popleft()
                if isinstance(chunk, Extent):
                    yield chunk
                    self._send(encode_extent(self.stream_id, chunk.offset, chunk.length))
                    continue
                if credit := self._body_window.consume(len(chunk)):
                    self._send(encode_credit(self.stream_id, credit))
                yield chunk
            elif self._body_ended:
                return
            else:
                await self._body_pulse.wait()

    def _send(self, frame: bytes) -> None:
        if self.live:
            self._session.enqueue(frame)

    async def _send_raw(self, kind: FrameKind, data: bytes) -> None:
        view = memoryview(data)
        while view:
            size = await self._output_window.acquire(min(len(view), DATA_CHUNK_BYTES))
            if not size:  # the session ended while this waited for credit
                raise asyncio.CancelledError
            self._send(encode_frame(kind, self.stream_id, bytes(view[:size])))
            view = view[size:]

    async def lent_extent(self) -> Extent:
        """An extent the host lent for output (a download), waiting for one."""
        while not self._lent:
            await self._lent_pulse.wait()
        return self._lent.popleft()

    def filled(self, extent: Extent, size_bytes: int) -> None:
        """The next ``size_bytes`` of the output are in ``extent``: it goes back to the host."""
        self._send(encode_extent(self.stream_id, extent.offset, size_bytes))

    def add_credit(self, amount: int) -> None:
        self._output_window.grant(amount)

    def end(self) -> None:
        """The session ended: the handler is cancelled and stops waiting for credit."""
        self._output_window.close()
        if self.task is not None:
            self.task.cancel()

    def feed_body(self, frame: Frame) -> None:
        if not self._expects_body or self._body_ended:
            raise ProtocolError(f"unexpected body frame on stream {self.stream_id}")
        if frame.kind == FrameKind.END:
            self._body_ended = True
        else:
            self._body_window.receive(len(frame.payload))
            self._body.append(frame.payload)
        self._body_pulse.fire()

    def feed_extent(self, frame: Frame) -> None:
        """An extent from the host: the next piece of the body, or one lent for output."""
        if not self._bulk:
            raise ProtocolError(f"unexpected extent on stream {self.stream_id}")
        extent = Extent(*frame.extent())
        if not self._expects_body:
            self._lent.append(extent)
            self._lent_pulse.fire()
        elif self._body_ended:
            raise ProtocolError(f"an extent after the end of the body on stream {self.stream_id}")
        else:
            self._body.append(extent)
            self._body_pulse.fire()


class Session:
    """Serves the port forever; every session ends at a disconnect or a new sync."""

    def __init__(self, port: Port, handler: Handler) -> None:
        self._port = port
        self._handler = handler
        self._scanner = SyncScanner(HOST_SYNC_MAGIC)
        self._decoder = FrameDecoder()
        self._synced = False
        self.generation = 0
        self._requests: dict[int, RequestContext] = {}

    async def run(self) -> None:
        self._port.start(self._receive, self._disconnected)
        try:
            await asyncio.Event().wait()
        finally:
            self._reset()

    def enqueue(self, frame: bytes) -> None:
        self._port.write(frame)

    def _disconnected(self) -> None:
        if self._synced:
            log.info("host disconnected")
        self._reset()

    def _receive(self, data: bytes) -> None:
        while (found := self._scanner.feed(data)) is not None:
            nonce, data = found
            self._reset()
            self._synced = True
            # Anything the writer still had in flight precedes this on the wire;
            # the host skips up to the reply magic.
            self.enqueue(AGENT_SYNC_MAGIC + nonce)
        if not self._synced:
            return
        try:
            for frame in self._decoder.feed(data):
                self._on_frame(frame)
        except ProtocolError as exc:
            log.warning("protocol error, waiting for a new sync: %s", exc)
            self._reset()
            self.enqueue(encode_message(0, error_message(ErrorCode.PROTOCOL_ERROR, str(exc))))

    def _reset(self) -> None:
        self.generation += 1
        self._synced = False
        self._decoder.reset()
        self._port.discard_pending()
        requests, self._requests = self._requests, {}
        for context in requests.values():
            context.end()

    def _on_frame(self, frame: Frame) -> None:
        if frame.kind == FrameKind.MESSAGE:
            self._start_request(frame)
            return
        context = self._requests.get(frame.stream_id)
        if frame.kind in (FrameKind.DATA, FrameKind.END):
            if context is not None:
                context.feed_body(frame)
        elif frame.kind == FrameKind.EXTENT:
            if context is not None:
                context.feed_extent(frame)
        elif frame.kind == FrameKind.CREDIT:
            if context is not None:
                context.add_credit(frame.credit())
        elif frame.kind == FrameKind.CANCEL:
            if context is not None and context.task is not None:
                context.task.cancel()
        else:
            raise ProtocolError(f"the host may not send {frame.kind.name} frames")

    def _start_request(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if stream_id == 0 or stream_id in self._requests:
            raise ProtocolError(f"stream id {stream_id} is reserved or already in use")
        try:
            request = parse_request(frame.json())
        except (ProtocolError, WireError) as exc:
            self.enqueue(encode_message(stream_id, error_message(exc.code, str(exc))))
            return
        context = RequestContext(self, stream_id, request.has_body, request.bulk)
        self._requests[stream_id] = context
        context.task = asyncio.create_task(self._serve(context, request), name=f"req-{request.op}")
        context.task.add_done_callback(lambda task: self._cancelled_unstarted(context, task))

    def _cancelled_unstarted(self, context: RequestContext, task: asyncio.Task[None]) -> None:
        """A request cancelled before its task first ran never entered ``_serve``, which answers
        every other one: the host still gets its answer (until then it keeps the call's
        transfer lane from other calls)."""
        if not task.cancelled():
            return
        context._send(
            encode_message(context.stream_id, error_message(ErrorCode.CANCELLED, "request cancelled"))
        )
        if self._requests.get(context.stream_id) is context:
            del self._requests[context.stream_id]

    async def _serve(self, context: RequestContext, request: Request) -> None:
        try:
            result = await self._handler(context, request)
            reply = result_message(result)
        except AgentError as exc:
            reply = error_message(exc.code, exc.message)
        except OSError as exc:
            # A system call a handler did not expect to fail: its errno says why (EPERM, ENOENT, ...).
            error = from_os_error(exc)
            reply = error_message(error.code, error.message)
        except WireError as exc:
            reply = error_message(exc.code, str(exc))
        except asyncio.CancelledError:
            reply = error_message(ErrorCode.CANCELLED, "request cancelled")
        except Exception as exc:
            log.error("request %s failed:\n%s", request.op, traceback.format_exc())
            reply = error_message(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        try:
            frame = encode_message(context.stream_id, reply)
        except ProtocolError as exc:
            # A result too big for one frame (a huge rich result): say so instead.
            frame = encode_message(context.stream_id, error_message(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)))
        except WireError as exc:
            # A result holding text UTF-8 cannot carry (a rich result's unpaired surrogate).
            frame = encode_message(context.stream_id, error_message(exc.code, f"the result has {exc}"))
        context._send(frame)
        if self._requests.get(context.stream_id) is context:
            del self._requests[context.stream_id]
