"""Per-stream flow control on the agent channel, the same code at both ends.

A stream's raw bytes (output, file data, request bodies) flow under a window of
``INITIAL_WINDOW`` bytes, as in HTTP/2. The sender holds a ``SendWindow``: it
starts with the whole window as credit, spends it frame by frame and waits while
it has none. The receiver holds a ``ReceiveWindow``: it counts the bytes it holds
for its consumer (more than the window means the peer broke the protocol) and,
as the consumer takes them, returns them as CREDIT once a quarter of the window
has been consumed: few CREDIT frames, and no stalls. The agent sends output under
one and receives bodies through the other; the host the other way round.

A grant of nothing, or of more than the sender has spent, is a protocol error:
credit only ever returns bytes the receiver was sent.
"""

from __future__ import annotations

from ember.protocol.framing import INITIAL_WINDOW, ProtocolError
from ember.protocol.pulse import Pulse


class SendWindow:
    """The credit a sender has on one stream; ``acquire`` waits exactly while there is none."""

    __slots__ = ("_closed", "_credit", "_pulse", "size_bytes", "stream_id")

    def __init__(self, stream_id: int, size_bytes: int = INITIAL_WINDOW) -> None:
        self.stream_id = stream_id
        self.size_bytes = size_bytes
        self._credit = size_bytes
        self._closed = False
        self._pulse = Pulse()

    @property
    def credit(self) -> int:
        return self._credit

    async def acquire(self, wanted_bytes: int) -> int:
        """Spend up to ``wanted_bytes`` of credit, waiting while there is none.

        Returns what was spent: at least 1 byte, or 0 when the stream was closed
        while it had no credit left (the sender then stops sending).
        """
        if wanted_bytes <= 0:
            raise ValueError(f"a sender must want at least 1 byte, not {wanted_bytes}")
        while self._credit == 0:
            if self._closed:
                return 0
            await self._pulse.wait()
        spent = min(wanted_bytes, self._credit)
        self._credit -= spent
        return spent

    def grant(self, amount: int) -> None:
        """Credit the receiver returned; ``ProtocolError`` if it is nothing or more than was spent."""
        if amount <= 0:
            raise ProtocolError(f"a grant of {amount} bytes of credit on stream {self.stream_id}")
        spent = self.size_bytes - self._credit
        if amount > spent:
            raise ProtocolError(
                f"a grant of {amount} bytes of credit on stream {self.stream_id},"
                f" which had spent only {spent}"
            )
        self._credit += amount
        self._pulse.fire()

    def close(self) -> None:
        """The stream ended: a sender waiting for credit stops waiting (``acquire`` returns 0)."""
        self._closed = True
        self._pulse.fire()


class ReceiveWindow:
    """What a receiver holds of one stream, and the credit to return as it is consumed."""

    __slots__ = ("_batch_bytes", "_held", "_unacknowledged", "size_bytes", "stream_id")

    def __init__(self, stream_id: int, size_bytes: int = INITIAL_WINDOW) -> None:
        self.stream_id = stream_id
        self.size_bytes = size_bytes
        self._batch_bytes = max(1, size_bytes // 4)
        self._held = 0
        self._unacknowledged = 0

    @property
    def held(self) -> int:
        """Bytes received and not yet consumed."""
        return self._held

    @property
    def unacknowledged(self) -> int:
        """Bytes consumed whose credit has not been returned yet (less than a batch)."""
        return self._unacknowledged

    def receive(self, size_bytes: int) -> None:
        """Bytes arrived for the consumer; ``ProtocolError`` if the sender overran the window."""
        if self._held + size_bytes > self.size_bytes:
            raise ProtocolError(
                f"the flow-control window of stream {self.stream_id} was overrun:"
                f" {self._held + size_bytes} bytes unconsumed, {self.size_bytes} allowed"
            )
        self._held += size_bytes

    def consume(self, size_bytes: int) -> int:
        """The consumer took ``size_bytes`` of what was received: the credit to return now, or 0."""
        if not 0 <= size_bytes <= self._held:
            raise ValueError(f"consuming {size_bytes} bytes of the {self._held} received")
        self._held -= size_bytes
        self._unacknowledged += size_bytes
        if self._unacknowledged < self._batch_bytes:
            return 0
        grant, self._unacknowledged = self._unacknowledged, 0
        return grant
