"""Bounded output buffers with absolute offsets, and the filter that finds cell markers.

A process's stdout is kept as the last ``capacity`` bytes, addressed by absolute
offset since the process started, so a reader that reattaches later can ask for
"everything from offset N" and learn how much of it is already gone.
"""

from __future__ import annotations

from collections import deque


class OutputBuffer:
    """The tail of one byte stream: at most ``capacity`` bytes (plus one chunk) are kept."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[bytes] = deque()
        self.start = 0  # absolute offset of the oldest byte still held
        self.end = 0  # absolute offset one past the newest byte
        self.closed = False

    def append(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self.end += len(data)
        while len(self._chunks) > 1 and self.end - self.start - len(self._chunks[0]) >= self.capacity:
            self.start += len(self._chunks.popleft())
        if len(self._chunks) == 1 and self.end - self.start > self.capacity:
            # One huge chunk: keep only its tail.
            drop = self.end - self.start - self.capacity
            self._chunks[0] = self._chunks[0][drop:]
            self.start += drop

    def close(self) -> None:
        self.closed = True

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """Return ``(lost, data)``: bytes from ``offset`` on, ``lost`` of which were dropped."""
        lost = max(0, self.start - offset)
        offset = max(offset, self.start)
        pieces: list[bytes] = []
        size = 0
        position = self.start
        for chunk in self._chunks:
            chunk_end = position + len(chunk)
            if chunk_end > offset:
                piece = chunk[max(0, offset - position) :]
                pieces.append(piece[: limit - size])
                size += len(pieces[-1])
                if size >= limit:
                    break
            position = chunk_end
        return lost, b"".join(pieces)


class MarkerFilter:
    """Passes a byte stream through until ``marker`` appears, holding back partial matches.

    The REPL prints a per-execution marker when a cell is done; this strips it so
    that the user sees exactly their own output, even if the marker arrives split
    across reads.
    """

    def __init__(self, marker: bytes) -> None:
        self._marker = marker
        self._held = b""
        self.found = False

    def feed(self, data: bytes) -> bytes:
        if self.found:
            return b""
        data = self._held + data
        index = data.find(self._marker)
        if index >= 0:
            self.found = True
            self._held = b""
            return data[:index]
        keep = 0
        for size in range(min(len(self._marker) - 1, len(data)), 0, -1):
            if self._marker.startswith(data[-size:]):
                keep = size
                break
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        """Whatever was held back, for when the stream ended without the marker."""
        held, self._held = self._held, b""
        return held
