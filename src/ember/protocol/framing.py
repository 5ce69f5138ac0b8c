"""Length-prefixed frames multiplexing many requests over one byte stream.

Layout, big-endian: ``u32 length | u8 kind | u32 stream_id | payload``, where
``length`` counts the bytes after itself (so it is at least 5). ``stream_id`` is
the request id the host chose; 0 is the connection itself. MESSAGE payloads are
UTF-8 JSON objects; STDOUT, STDERR and DATA payloads are raw bytes.

Raw data is flow-controlled per stream with credits, as in HTTP/2: a sender may
have at most ``INITIAL_WINDOW`` bytes of raw payload unacknowledged on a stream,
and the receiver returns CREDIT frames as it consumes them (``ember.protocol.window``,
used by both ends). Neither side's reader ever blocks, so one slow consumer cannot
stall the other streams.

A file's bytes may travel beside the stream instead, on the VM's transfer disk
(``ember.protocol.extents``): an EXTENT frame (``u64 offset | u32 length``) stands
for that many bytes of the stream's body or output, in their place in its order.

Because a host may reconnect while a frame was half-written, a connection starts
with a sync preamble: a fixed 16-byte magic plus a 16-byte nonce. The agent
watches its input for the host's magic at any offset and restarts the session
there; the host skips whatever precedes the agent's reply. The magics are derived
at import time so that their bytes appear in no file Ember ships.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from ember.protocol.codes import ErrorCode
from ember.protocol.wire import WireError

HEADER = struct.Struct(">IBI")
CREDIT = struct.Struct(">I")
EXTENT = struct.Struct(">QI")
MAX_FRAME_BYTES = 8 * 1024 * 1024
DATA_CHUNK_BYTES = 256 * 1024
INITIAL_WINDOW = 4 * 1024 * 1024
HOST_SYNC_MAGIC = hashlib.sha256(b"ember host sync v1").digest()[:16]
AGENT_SYNC_MAGIC = hashlib.sha256(b"ember agent sync v1").digest()[:16]
NONCE_BYTES = 16
SYNC_BYTES = len(HOST_SYNC_MAGIC) + NONCE_BYTES
#: A second virtio-serial port beside the agent's, for measuring the channel itself
#: (``ember bench``): bytes with no framing between a guest command and its socket.
PROBE_PORT_NAME = "ember.probe"


class FrameKind(enum.IntEnum):
    MESSAGE = 1
    STDOUT = 2
    STDERR = 3
    DATA = 4
    END = 5
    CREDIT = 6
    CANCEL = 7
    EXTENT = 8


RAW_KINDS = frozenset({FrameKind.STDOUT, FrameKind.STDERR, FrameKind.DATA})


class ProtocolError(Exception):
    """The byte stream broke the framing rules; the connection cannot be trusted."""

    code = ErrorCode.PROTOCOL_ERROR


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    stream_id: int
    payload: bytes = b""

    def to_bytes(self) -> bytes:
        return encode_frame(self.kind, self.stream_id, self.payload)

    def json(self) -> dict[str, Any]:
        """Decode a MESSAGE payload, raising ProtocolError on anything but a JSON object."""
        try:
            value = json.loads(self.payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"message on stream {self.stream_id} is not JSON: {exc}") from exc
        except RecursionError:  # json's scanner gives up on deep nesting this way
            raise ProtocolError(f"message on stream {self.stream_id} is nested too deeply") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"message on stream {self.stream_id} is not a JSON object")
        return value

    def credit(self) -> int:
        if len(self.payload) != CREDIT.size:
            raise ProtocolError("CREDIT frame must carry exactly 4 bytes")
        return CREDIT.unpack(self.payload)[0]

    def extent(self) -> tuple[int, int]:
        """``(offset, length)`` of an EXTENT frame; a length of 0 is a protocol error."""
        if len(self.payload) != EXTENT.size:
            raise ProtocolError(f"EXTENT frame must carry exactly {EXTENT.size} bytes")
        offset, length = EXTENT.unpack(self.payload)
        if not length:
            raise ProtocolError(f"an empty extent on stream {self.stream_id}")
        return offset, length


def encode_frame(kind: FrameKind, stream_id: int, payload: bytes = b"") -> bytes:
    if HEADER.size - 4 + len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(len(payload) + 5, kind, stream_id) + payload


def encode_message(stream_id: int, message: dict[str, Any]) -> bytes:
    """A MESSAGE frame; WireError if its text is not valid Unicode, ProtocolError if it is too large."""
    try:
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise WireError(f"text that is not valid Unicode (an unpaired surrogate): {exc.reason}") from None
    return encode_frame(FrameKind.MESSAGE, stream_id, body)


def encode_credit(stream_id: int, amount: int) -> bytes:
    return encode_frame(FrameKind.CREDIT, stream_id, CREDIT.pack(amount))


def encode_extent(stream_id: int, offset: int, length: int) -> bytes:
    return encode_frame(FrameKind.EXTENT, stream_id, EXTENT.pack(offset, length))


class FrameDecoder:
    """Incremental decoder: feed it bytes in any pieces, get whole frames back.

    Memory stays bounded by MAX_FRAME_BYTES plus one header: a length beyond the
    limit or an unknown kind raises ProtocolError as soon as the header arrives.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            length, kind, stream_id = HEADER.unpack_from(self._buffer)
            if length < 5 or length > MAX_FRAME_BYTES:
                raise ProtocolError(f"frame length {length} outside 5..{MAX_FRAME_BYTES}")
            try:
                frame_kind = FrameKind(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind}") from None
            end = 4 + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(frame_kind, stream_id, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    def reset(self) -> None:
        self._buffer.clear()

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)


def sync_preamble(magic: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"sync nonce must be {NONCE_BYTES} bytes")
    return magic + nonce


class SyncScanner:
    """Finds a sync preamble (magic + nonce) anywhere in a byte stream.

    ``feed`` returns ``(nonce, rest)`` when a preamble completes inside the bytes
    seen so far, ``rest`` being what followed it (scan it again: a peer may have
    synced twice); else ``None``. Only the last ``SYNC_BYTES - 1`` bytes are kept
    between calls, so scanning costs no memory.
    """

    def __init__(self, magic: bytes) -> None:
        self._magic = magic
        self._tail = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        window = self._tail + data
        index = window.find(self._magic)
        if index >= 0 and len(window) - index >= SYNC_BYTES:
            self._tail = b""
            nonce = window[index + len(self._magic) : index + SYNC_BYTES]
            return nonce, window[index + SYNC_BYTES :]
        # Keep enough to find a preamble that straddles this chunk and the next.
        self._tail = window[index:] if index >= 0 else window[-(SYNC_BYTES - 1) :]
        return None

    def reset(self) -> None:
        self._tail = b""
