"""The frame codec: round trips, arbitrary bytes, resync."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    HEADER,
    HOST_SYNC_MAGIC,
    MAX_FRAME_BYTES,
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

frames = st.builds(
    Frame,
    kind=st.sampled_from(list(FrameKind)),
    stream_id=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=2048),
)


@given(st.lists(frames, max_size=20), st.data())
def test_frames_survive_any_split_of_the_byte_stream(items, data):
    wire = b"".join(frame.to_bytes() for frame in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = FrameDecoder()
    decoded = []
    start = 0
    for cut in [*cuts, len(wire)]:
        decoded.extend(decoder.feed(wire[start:cut]))
        start = cut
    assert decoded == items
    assert decoder.pending_bytes == 0


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_raise_protocol_error_with_bounded_memory(garbage):
    decoder = FrameDecoder()
    try:
        for frame in decoder.feed(garbage):
            assert isinstance(frame.kind, FrameKind)
    except ProtocolError:
        return
    # Whatever was not decoded is at most one frame in progress.
    assert decoder.pending_bytes <= len(garbage)


def test_oversized_length_is_refused_as_soon_as_the_header_arrives():
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="outside"):
        decoder.feed(HEADER.pack(MAX_FRAME_BYTES + 1, FrameKind.DATA, 1))


def test_unknown_kind_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        FrameDecoder().feed(HEADER.pack(5, 99, 1))


def test_encoder_refuses_payloads_over_the_limit():
    with pytest.raises(ProtocolError):
        encode_frame(FrameKind.DATA, 1, bytes(MAX_FRAME_BYTES))


def test_message_and_credit_frames_decode_to_their_values():
    decoder = FrameDecoder()
    message, credit = decoder.feed(encode_message(7, {"op": "ping"}) + encode_credit(7, 12345))
    assert message.json() == {"op": "ping"}
    assert credit.credit() == 12345


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_a_message_that_is_not_a_json_object_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError):
        Frame(FrameKind.MESSAGE, 3, payload).json()


def test_sync_magics_differ_and_never_appear_in_the_source():
    assert HOST_SYNC_MAGIC != AGENT_SYNC_MAGIC
    import ember.protocol.framing as module

    with open(module.__file__, "rb") as handle:
        source = handle.read()
    assert HOST_SYNC_MAGIC not in source and AGENT_SYNC_MAGIC not in source


@given(st.binary(max_size=300), st.binary(max_size=300), st.integers(1, 64))
def test_scanner_finds_the_preamble_however_the_stream_is_cut(before, after, piece):
    nonce = bytes(range(NONCE_BYTES))
    wire = before + HOST_SYNC_MAGIC + nonce + after
    scanner = SyncScanner(HOST_SYNC_MAGIC)
    found = None
    rest = b""
    for index in range(0, len(wire), piece):
        chunk = wire[index : index + piece]
        if found is not None:
            rest += chunk
            continue
        found = scanner.feed(chunk)
        if found is not None:
            rest = found[1]
    assert found is not None
    assert found[0] == nonce
    assert rest == after
