"""Output buffers and the cell-marker filter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ember.agent.buffers import MarkerFilter, OutputBuffer


def test_buffer_keeps_the_tail_and_reports_what_was_lost():
    buffer = OutputBuffer(capacity=10)
    for _ in range(5):
        buffer.append(b"abcdef")
    assert buffer.end == 30
    lost, data = buffer.read(0, 100)
    assert lost == buffer.start
    assert len(data) == 30 - buffer.start
    assert data.endswith(b"abcdef")
    assert 10 <= len(data) <= 16


def test_one_huge_chunk_is_cut_to_capacity():
    buffer = OutputBuffer(capacity=4)
    buffer.append(b"0123456789")
    assert buffer.read(0, 100) == (6, b"6789")


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=30), st.integers(0, 400), st.integers(1, 64))
def test_reads_return_exactly_the_bytes_at_their_offsets(chunks, offset, limit):
    buffer = OutputBuffer(capacity=1 << 20)
    for chunk in chunks:
        buffer.append(chunk)
    everything = b"".join(chunks)
    lost, data = buffer.read(offset, limit)
    assert lost == 0
    assert data == everything[offset : offset + limit]


@given(st.binary(max_size=200), st.binary(max_size=200), st.lists(st.integers(1, 30), max_size=20))
def test_marker_is_removed_however_the_stream_is_split(before, after, cuts):
    marker = b"\x1eabc123\x1e"
    wire = before + marker + after
    marker_filter = MarkerFilter(marker)
    passed = b""
    position = 0
    for size in [*cuts, len(wire)]:
        passed += marker_filter.feed(wire[position : position + size])
        position += size
    if marker in before:
        assert marker_filter.found
        assert passed == before[: before.index(marker)]
    else:
        assert marker_filter.found
        assert passed == before
