"""The guest's bytes on their way into the daemon: found, sliced and paced.

Guest code runs as root and may write anything to the agent channel, as fast as
virtio-serial carries it. The reader keeps that the guest's own cost:

- before the agent's sync reply it keeps only the scanner's tail, and gives up
  after ``PRESYNC_LIMIT_BYTES`` or ``STALE_SYNC_LIMIT`` replies to other nonces
  (an agent that resyncs sends little before its reply: what its writer had in
  flight, one reply per preamble it read);
- after it, it decodes ``SLICE_BYTES`` at a time (the rest of a bigger frame in
  one piece: only many frames cost CPU), for at most ``TURN_S`` of CPU per turn of
  the event loop (a slice of tiny frames takes ~1.5 ms), and pauses the socket
  while a backlog waits: it holds at most one socket read and one partial frame
  (``MAX_FRAME_BYTES``), and one ``data_received`` never loops over a whole read
  of tiny frames;
- it holds each connection to ``CPU_SHARE`` of a core, after a ``CPU_BURST_S``
  burst, counted in the event loop thread's CPU time: a guest flooding frames is
  read more slowly instead of being served at every other sandbox's expense.
  Reading slowly breaks nothing (the channel is flow-controlled), so honest
  guests need no margin here; they never come near it.

Whatever breaks the framing ends the connection through ``on_violation``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    HEADER,
    SYNC_BYTES,
    Frame,
    FrameDecoder,
    ProtocolError,
    SyncScanner,
)

SLICE_BYTES = 8 * 1024
TURN_S = 0.001
CPU_SHARE = 0.25
CPU_BURST_S = 0.05
PRESYNC_LIMIT_BYTES = 64 * 1024 * 1024
STALE_SYNC_LIMIT = 256

log = logging.getLogger("ember.engine.channel")


class GuestReader:
    """Turns one connection's bytes into frames for ``on_frame``; see the module docstring."""

    def __init__(
        self,
        on_synced: Callable[[], None],
        on_frame: Callable[[Frame], None],
        on_violation: Callable[[ProtocolError], None],
    ) -> None:
        self._on_synced = on_synced
        self._on_frame = on_frame
        self._on_violation = on_violation
        self._scanner = SyncScanner(AGENT_SYNC_MAGIC)
        self._decoder = FrameDecoder()
        self._transport: asyncio.ReadTransport | None = None
        self._nonce = b""
        self._synced = False
        self._presync_bytes = 0
        self._stale_syncs = 0
        self._backlog = memoryview(b"")
        self._frame_left = 0  # bytes still to come of the frame the decoder holds, when known
        self._paused = False
        self._next_slice: asyncio.Handle | None = None
        self._budget_s = CPU_BURST_S
        self._refilled_at = 0.0

    def start(self, transport: asyncio.ReadTransport) -> None:
        """Read a new connection, from nothing: no sync yet, a full CPU budget."""
        self.stop()
        self._transport = transport
        self._scanner.reset()
        self._decoder.reset()
        self._synced = False
        self._nonce = b""
        self._presync_bytes = self._stale_syncs = 0
        self._budget_s, self._refilled_at = CPU_BURST_S, time.monotonic()

    def expect(self, nonce: bytes) -> None:
        """Only the agent's reply to this nonce (the latest preamble sent) syncs."""
        self._nonce = nonce

    def flush(self) -> None:
        """The connection is gone: route what it had sent (at most one read) without pacing."""
        while self._backlog and self._transport is not None:
            if self._next_slice is not None:
                self._next_slice.cancel()
            self._budget_s = CPU_BURST_S
            self._read_slice()

    def stop(self) -> None:
        """Read nothing more of this connection (closed, or broken by the guest)."""
        self._transport = None
        self._backlog = memoryview(b"")
        self._decoder.reset()
        self._frame_left = 0
        self._paused = False
        if self._next_slice is not None:
            self._next_slice.cancel()
            self._next_slice = None

    @property
    def buffered_bytes(self) -> int:
        """What the reader holds of this connection: backlog, partial frame, scanner tail."""
        return len(self._backlog) + self._decoder.pending_bytes + SYNC_BYTES - 1

    def feed(self, data: bytes) -> None:
        """Bytes from ``data_received``."""
        if self._transport is None:
            return
        try:
            if not self._synced:
                data = self._scan(data)
                if not self._synced:
                    return
        except ProtocolError as exc:
            self._violate(exc)
            return
        if self._backlog:  # only if the socket delivered more after pause_reading
            self._backlog = memoryview(bytes(self._backlog) + data)
        else:
            self._backlog = memoryview(data)
        if self._next_slice is None:
            self._read_slice()

    def _scan(self, data: bytes) -> bytes:
        self._presync_bytes += len(data)
        if self._presync_bytes > PRESYNC_LIMIT_BYTES:
            raise ProtocolError(f"it sent {self._presync_bytes} bytes without answering the sync")
        # In pieces: each stale reply makes the scanner copy what follows it.
        for start in range(0, len(data), SLICE_BYTES):
            found = self._scanner.feed(data[start : start + SLICE_BYTES])
            while found is not None and found[0] != self._nonce:
                self._stale_syncs += 1
                if self._stale_syncs > STALE_SYNC_LIMIT:
                    raise ProtocolError(f"it sent more than {STALE_SYNC_LIMIT} sync replies to old nonces")
                found = self._scanner.feed(found[1])
            if found is not None:
                self._synced = True
                self._on_synced()
                return found[1] + data[start + SLICE_BYTES :]
        return b""

    def _read_slice(self) -> None:
        self._next_slice = None
        transport = self._transport
        if transport is None:
            return
        now = time.monotonic()
        self._budget_s = min(CPU_BURST_S, self._budget_s + (now - self._refilled_at) * CPU_SHARE)
        self._refilled_at = now
        turn_started = used = time.thread_time()
        while self._backlog and self._budget_s > 0 and used - turn_started < TURN_S:
            size = max(SLICE_BYTES, self._frame_left)
            piece, self._backlog = self._backlog[:size], self._backlog[size:]
            started = used
            try:
                for frame in self._decoder.feed(piece):  # type: ignore[arg-type]  # any buffer works
                    self._on_frame(frame)
                self._track_frame(piece)
            except ProtocolError as exc:
                self._violate(exc)
                return
            except Exception as exc:
                # A host bug, but one the guest's bytes reached: the channel cannot go on.
                log.exception("reading the agent channel failed")
                self._violate(ProtocolError(f"what it sent broke the host's reader: {exc!r}"))
                return
            finally:
                used = time.thread_time()
                self._budget_s -= used - started
            if self._transport is not transport:  # a frame ended the connection
                return
        if not self._backlog:
            if self._paused:
                self._paused = False
                transport.resume_reading()
            return
        if not self._paused:
            self._paused = True
            transport.pause_reading()
        loop = asyncio.get_running_loop()
        if self._budget_s > 0:
            self._next_slice = loop.call_soon(self._read_slice)  # let the loop run other work first
        else:
            self._next_slice = loop.call_later(-self._budget_s / CPU_SHARE, self._read_slice)

    def _track_frame(self, piece: memoryview) -> None:
        """Note how much of the frame in progress is still to come, if its header was in ``piece``."""
        held = self._decoder.pending_bytes
        if held > len(piece):  # still the frame that began before this piece
            self._frame_left = max(0, self._frame_left - len(piece))
        elif held >= HEADER.size:  # the decoder checked this length against MAX_FRAME_BYTES
            start = len(piece) - held
            self._frame_left = 4 + int.from_bytes(piece[start : start + 4], "big") - held
        else:
            self._frame_left = 0

    def _violate(self, exc: ProtocolError) -> None:
        self.stop()
        self._on_violation(exc)
