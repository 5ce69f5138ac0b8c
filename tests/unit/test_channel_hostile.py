"""The host end of the agent channel against a hostile guest, over real unix sockets.

The fake guest is a thread with a blocking socket, as the agent's port is: it
answers the sync and (when well behaved) every request, or writes whatever a
test tells it to. Whatever it writes, the host's memory for that channel stays
bounded, its calls end (with ProtocolError when the guest broke the protocol),
and another channel on the same event loop keeps answering promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import socket
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import errors
from ember.engine import _reader
from ember.engine.channel import _MAX_CANCELLED, AgentCall, AgentClient, Chunk
from ember.protocol.extents import SLOT_BYTES, TRANSFER_DISK_BYTES
from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    DATA_CHUNK_BYTES,
    HEADER,
    HOST_SYNC_MAGIC,
    INITIAL_WINDOW,
    MAX_FRAME_BYTES,
    RAW_KINDS,
    SYNC_BYTES,
    Frame,
    FrameDecoder,
    FrameKind,
    SyncScanner,
    encode_credit,
    encode_extent,
    encode_frame,
    encode_message,
)
from ember.protocol.messages import FileRead, FileWrite, Ping

pytestmark = pytest.mark.timeout(120)

RESULT = {"type": "result", "result": {"pong": True}}
# What the reader may hold of one connection: a socket read, a slice and a partial frame.
READ_BOUND = 256 * 1024 + _reader.SLICE_BYTES + 64


class FakeGuest:
    """The guest's end of one channel; see the module docstring."""

    def __init__(self, path: str, *, answer: bool = True, sync: bool = True) -> None:
        self.path = path
        self.answer = answer
        self._sync = sync
        self.requests: queue.Queue[Frame] = queue.Queue()
        self.cancels: list[int] = []
        self.extents: queue.Queue[list[Frame]] = queue.Queue()
        self.synced = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._accepted = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen(1)
        self._threads = [threading.Thread(target=self._read, daemon=True)]
        self._threads[0].start()

    def send(self, data: bytes) -> bool:
        """Write as the guest does (blocking while the host is not reading); False once it left."""
        self._accepted.wait(10)
        try:
            with self._lock:
                assert self._sock is not None
                self._sock.sendall(data)
            return True
        except OSError:
            return False

    def write(self, data: bytes) -> None:
        """Send ``data`` from a thread: the event loop must stay free to read it."""
        self.flood(data, total_bytes=len(data))

    def flood(self, chunk: bytes, total_bytes: int | None = None) -> None:
        """Write ``chunk`` over and over, in a thread, until ``total_bytes`` or the host leaves."""

        def run() -> None:
            sent = 0
            while not self.closed.is_set() and (total_bytes is None or sent < total_bytes):
                if not self.send(chunk):
                    return
                sent += len(chunk)

        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def next_request(self, timeout_s: float = 10) -> Frame:
        return self.requests.get(timeout=timeout_s)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for thread in self._threads:
            thread.join(10)
        if self._sock is not None:
            self._sock.close()

    def _read(self) -> None:
        try:
            self._sock, _ = self._listener.accept()
        except OSError:
            return
        self._accepted.set()
        scanner, decoder = SyncScanner(HOST_SYNC_MAGIC), FrameDecoder()
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            while (found := scanner.feed(data)) is not None:
                nonce, data = found
                decoder.reset()
                if self._sync:
                    self.send(AGENT_SYNC_MAGIC + nonce)
                    self.synced.set()
            if not self.synced.is_set():
                continue
            for frame in decoder.feed(data):
                if frame.kind == FrameKind.MESSAGE:
                    self.requests.put(frame)
                    if self.answer:
                        self.send(encode_message(frame.stream_id, RESULT))
                elif frame.kind == FrameKind.CANCEL:
                    self.cancels.append(frame.stream_id)
                elif frame.kind == FrameKind.EXTENT:
                    self.extents.put([frame])


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # Short: a unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ember-chan-") as directory:
        yield directory


class Channel:
    """A fake guest and the host's client for it (with a transfer disk), with the violations
    the client reported."""

    def __init__(self, guest: FakeGuest) -> None:
        self.guest = guest
        self.violations: list[str] = []
        self.disk = Path(guest.path).with_suffix(".disk")
        with self.disk.open("wb") as disk:
            disk.truncate(TRANSFER_DISK_BYTES)
        self.client = AgentClient(
            "sandbox test", on_violation=self.violations.append, transfer_disk=self.disk
        )


@pytest.fixture
async def channels(socket_dir: str):
    made: list[Channel] = []

    async def make(*, answer: bool = True, sync: bool = True, connect: bool = True) -> Channel:
        guest = FakeGuest(os.path.join(socket_dir, f"g{len(made)}.sock"), answer=answer, sync=sync)
        channel = Channel(guest)
        made.append(channel)
        if connect:
            await asyncio.wait_for(channel.client.connect(guest.path), 10)
        return channel

    yield make
    for channel in made:
        await channel.client.close()
        await asyncio.to_thread(channel.guest.close)


def raw(stream_id: int, data: bytes, kind: FrameKind = FrameKind.STDOUT) -> bytes:
    return encode_frame(kind, stream_id, data)


async def fails_with_protocol_error(awaitable, timeout_s: float = 10) -> errors.ProtocolError:
    with pytest.raises(errors.ProtocolError) as caught:
        await asyncio.wait_for(awaitable, timeout_s)
    assert caught.value.code == "protocol_error"
    return caught.value


async def broken_without_reading(channel: Channel, call: AgentCall, timeout_s: float) -> errors.EmberError:
    """Wait for the channel to break while nobody consumes ``call``; its error."""
    await asyncio.wait_for(channel.client.closed.wait(), timeout_s)
    assert call._failure is not None and call._failure.code == "protocol_error"
    return call._failure


async def ping_latencies(client: AgentClient, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        assert await asyncio.wait_for(client.request(Ping()), 5) == {"pong": True}
        latencies.append(time.perf_counter() - started)
    return latencies


# ------------------------------------------------------------ garbage and framing


async def test_garbage_after_the_sync_fails_every_pending_call_with_a_protocol_error(channels):
    channel = await channels(answer=False)
    client = channel.client
    first, second = client.start(Ping()), client.start(Ping())
    channel.guest.next_request(), channel.guest.next_request()
    started = time.perf_counter()
    channel.guest.send(b"\xff" * 64 + os.urandom(4096))
    error = await fails_with_protocol_error(first.result())
    assert time.perf_counter() - started < 2
    await fails_with_protocol_error(second.result(), timeout_s=0.1)
    assert "the guest broke the agent protocol" in error.message
    assert len(channel.violations) == 1 and channel.violations[0].startswith(
        "the guest broke the agent protocol: "
    )
    assert not client.connected
    with pytest.raises(errors.ProtocolError):
        client.start(Ping())


async def test_a_frame_length_of_4_gib_is_refused_at_its_header(channels):
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    channel.guest.send(HEADER.pack(0xFFFFFFFF, FrameKind.STDOUT, call.stream_id) + b"x" * 1000)
    error = await fails_with_protocol_error(call.result())
    assert "frame length 4294967295" in error.message
    assert channel.client._reader.buffered_bytes < 64


async def test_a_frame_in_progress_holds_one_frame_and_no_more(channels):
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    # An 8 MiB frame that never completes: the decoder holds it, and nothing else grows.
    channel.guest.send(HEADER.pack(MAX_FRAME_BYTES, FrameKind.MESSAGE, call.stream_id))
    channel.guest.flood(b"\0" * 65536, total_bytes=MAX_FRAME_BYTES - 65536)
    deadline = time.monotonic() + 20
    while channel.client._reader._decoder.pending_bytes < HEADER.size + MAX_FRAME_BYTES - 65536:
        assert time.monotonic() < deadline
        assert channel.client._reader.buffered_bytes <= MAX_FRAME_BYTES + READ_BOUND
        await asyncio.sleep(0.01)
    assert channel.client._reader.buffered_bytes <= MAX_FRAME_BYTES + READ_BOUND
    assert not call.finished and channel.client.connected


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (lambda sid: raw(sid, b""), "empty stdout frame"),
        (lambda sid: encode_credit(sid, 0), "credit"),
        (lambda sid: encode_credit(sid, 1), "credit"),
        (lambda sid: encode_frame(FrameKind.CANCEL, sid), "only the host may send"),
        (lambda sid: encode_extent(sid, 0, SLOT_BYTES), "no transfer lane"),
        (lambda sid: encode_extent(sid, 0, 0), "empty extent"),
        (lambda sid: encode_frame(FrameKind.EXTENT, sid, b"short"), "exactly 12 bytes"),
        (lambda sid: encode_frame(FrameKind.END, sid), "only the host may send"),
        (lambda sid: encode_message(0, {"type": "error", "code": "x", "message": "y"}), "connection error"),
        (lambda sid: encode_frame(FrameKind.MESSAGE, sid, b"[" * 100_000), "nested too deeply"),
        (lambda sid: encode_frame(FrameKind.MESSAGE, sid, b"[1]"), "not a JSON object"),
        (lambda sid: encode_message(sid, {"type": "boom"}), "unknown type"),
        (lambda sid: encode_message(sid, {"type": "result", "result": 3}), "malformed result"),
        (
            lambda sid: encode_message(sid, {"type": "event", "event": "x", "data": {"a": "y" * 70_000}}),
            "an event of",
        ),
    ],
)
async def test_frames_no_agent_sends_are_protocol_violations(channels, frame, what):
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    channel.guest.write(frame(call.stream_id))
    error = await fails_with_protocol_error(call.result())
    assert what in error.message
    assert channel.violations == [error.message.removeprefix("sandbox test: ")]


async def test_an_8_mib_result_of_nested_empty_objects_ends_only_its_call(channels):
    # The one big parse a guest can force: its answer to a call the host made.
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    body = b'{"type":"result","result":{"a":[' + b"{}," * ((MAX_FRAME_BYTES - 64) // 3) + b"{}]}}"
    channel.guest.write(encode_frame(FrameKind.MESSAGE, call.stream_id, body))
    result = await asyncio.wait_for(call.result(), 20)
    assert len(result["a"]) > 2_000_000
    del result
    assert channel.client.connected


# ------------------------------------------------------------ the transfer disk


def lent_extents(channel: Channel, stream_id: int, count: int) -> list[tuple[int, int]]:
    """The extents the host lent the guest for a download's output, as the guest read them."""
    frames: list[Frame] = []
    while len(frames) < count:
        frames += [f for f in channel.guest.extents.get(timeout=10) if f.stream_id == stream_id]
    return [frame.extent() for frame in frames]


@pytest.mark.parametrize(
    ("give_back", "what"),
    [
        (lambda lent: (lent[0][0] + 4096, 10), "that it did not hold"),
        (lambda lent: (TRANSFER_DISK_BYTES + SLOT_BYTES, 10), "that it did not hold"),
        (lambda lent: (lent[0][0], SLOT_BYTES + 1), "of a 1048576-byte extent"),
    ],
)
async def test_a_guest_names_only_extents_it_was_lent(channels, give_back, what):
    channel = await channels(answer=False)
    lane = channel.client.transfer_lane()
    call = channel.client.start(FileRead(path="/x", extents=True), lane)
    lent = lent_extents(channel, call.stream_id, 8)
    assert len({offset for offset, _ in lent}) == 8 and {length for _, length in lent} == {SLOT_BYTES}
    channel.guest.write(encode_extent(call.stream_id, *give_back(lent)))
    error = await fails_with_protocol_error(call.result())
    assert what in error.message
    assert lane.released


async def test_a_download_holds_its_lane_and_reads_each_extent_once_consumed(channels):
    channel = await channels(answer=False)
    call = channel.client.start(FileRead(path="/x", extents=True), channel.client.transfer_lane())
    lent = lent_extents(channel, call.stream_id, 8)
    with open(channel.disk, "r+b") as disk:
        for index, (offset, _) in enumerate(lent):
            disk.seek(offset)
            disk.write(bytes([index]) * 1000)
    # All eight filled and given back at once, twice over: the second round was not lent.
    given = b"".join(encode_extent(call.stream_id, offset, 1000) for offset, _ in lent)
    channel.guest.write(given)
    received = []
    async for item in call:
        received.append(item.data)
        if len(received) == 8:
            break
    assert received == [bytes([index]) * 1000 for index in range(8)]
    assert len(lent_extents(channel, call.stream_id, 8)) == 8  # each lent again once read
    channel.guest.write(given + given)
    await fails_with_protocol_error(call.result())


async def test_a_guest_that_gives_back_another_calls_extent_loses_its_channel_and_the_disk_is_emptied(
    channels,
):
    channel = await channels(answer=False)
    first = channel.client.start(FileRead(path="/a", extents=True), channel.client.transfer_lane())
    second = channel.client.start(FileRead(path="/b", extents=True), channel.client.transfer_lane())
    theirs = lent_extents(channel, second.stream_id, 8)
    with open(channel.disk, "r+b") as disk:
        disk.seek(theirs[0][0])
        disk.write(b"second's output" * 1000)
    channel.guest.write(encode_extent(first.stream_id, theirs[0][0], 100))
    error = await fails_with_protocol_error(first.result())
    assert "that it did not hold" in error.message
    await fails_with_protocol_error(second.result())
    assert channel.violations and not channel.client.connected
    assert os.stat(channel.disk).st_blocks == 0  # nothing the guest wrote there is kept


async def test_an_upload_extent_the_guest_gives_back_twice_is_a_protocol_error(channels):
    channel = await channels(answer=False)
    lane = channel.client.transfer_lane()
    call = channel.client.start(FileWrite(path="/x"), lane)
    body = os.urandom(2 * SLOT_BYTES)
    await call.send_body(body)
    lent = lent_extents(channel, call.stream_id, 2)
    with open(channel.disk, "rb") as disk:
        disk.seek(lent[0][0])
        assert disk.read(SLOT_BYTES) == body[:SLOT_BYTES]  # what the guest reads is the body
    channel.guest.write(encode_extent(call.stream_id, *lent[0]) * 2)
    error = await fails_with_protocol_error(call.result())
    assert "that it did not hold" in error.message and lane.released


async def test_a_cancelled_calls_lane_waits_for_the_guests_answer_or_until_the_call_is_forgotten(channels):
    channel = await channels(answer=False)
    answered, silent = channel.client.transfer_lane(), channel.client.transfer_lane()
    first = channel.client.start(FileRead(path="/a", extents=True), answered)
    second = channel.client.start(FileRead(path="/b", extents=True), silent)
    await first.cancel()
    await second.cancel()
    assert not answered.released and not silent.released  # the guest may still write their extents
    channel.guest.write(
        encode_message(first.stream_id, {"type": "error", "code": "cancelled", "message": ""})
    )
    deadline = time.monotonic() + 10
    while not answered.released:
        assert time.monotonic() < deadline, "the guest's answer did not give the lane back"
        await asyncio.sleep(0.01)
    for _ in range(_MAX_CANCELLED):  # a guest that never answers: its call is forgotten in the end
        await channel.client.start(Ping()).cancel()
    assert silent.released and channel.client.connected


# ------------------------------------------------------------ floods


async def test_frames_for_streams_with_no_call_waiting_get_a_small_allowance(channels):
    channel = await channels()
    channel.guest.flood(raw(12345, b"x") * 4096)
    started = time.perf_counter()
    while channel.client.connected:
        assert time.perf_counter() - started < 10
        await asyncio.sleep(0.01)
    assert "no call waiting" in channel.violations[0]
    with pytest.raises(errors.ProtocolError):
        await channel.client.request(Ping())


async def test_a_cancelled_call_may_still_send_the_rest_of_its_window(channels):
    channel = await channels(answer=False)
    client = channel.client
    call = client.start(Ping())
    channel.guest.next_request()
    await call.cancel()
    with pytest.raises(errors.CancelledError):
        await call.result()
    # Its output in flight, a window's worth, and its last word: legitimate.
    late = raw(call.stream_id, b"o" * DATA_CHUNK_BYTES) * (INITIAL_WINDOW // DATA_CHUNK_BYTES)
    channel.guest.write(
        late + encode_message(call.stream_id, {"type": "error", "code": "cancelled", "message": ""})
    )
    channel.guest.answer = True
    assert await asyncio.wait_for(client.request(Ping()), 10) == {"pong": True}
    assert client.connected and channel.violations == []
    # Beyond it: a flood.
    channel.guest.flood(raw(call.stream_id, b"o" * DATA_CHUNK_BYTES), total_bytes=3 * MAX_FRAME_BYTES)
    await asyncio.wait_for(client.closed.wait(), 20)
    assert "after its cancel" in channel.violations[0]


async def test_a_consumer_that_stalls_holds_its_window_and_no_more(channels):
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    tracemalloc.start()
    try:
        channel.guest.flood(raw(call.stream_id, b"o" * 65536), total_bytes=2 * INITIAL_WINDOW)
        error = await broken_without_reading(channel, call, timeout_s=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "flow-control window" in error.message
    print(f"\nstalled consumer, 64 KiB frames: traced peak {peak / 2**20:.1f} MiB")
    assert peak < INITIAL_WINDOW + 3 * READ_BOUND + 4 * 2**20


async def test_tiny_frames_on_alternating_streams_cannot_queue_without_bound(channels):
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    tracemalloc.start()
    try:
        channel.guest.flood(raw(call.stream_id, b"o") + raw(call.stream_id, b"e", FrameKind.STDERR))
        error = await broken_without_reading(channel, call, timeout_s=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "queued more than" in error.message
    print(f"\nstalled consumer, alternating 1-byte frames: traced peak {peak / 2**20:.1f} MiB")
    assert peak < 32 * 2**20


async def test_an_event_flood_to_a_call_nobody_reads_is_cut_off(channels):
    channel = await channels(answer=False)
    call = channel.client.start(Ping())
    channel.guest.next_request()
    event = encode_message(call.stream_id, {"type": "event", "event": "change", "data": {"name": "f"}})
    channel.guest.flood(event * 1000)
    error = await broken_without_reading(channel, call, timeout_s=30)
    assert "flooded" in error.message
    assert call._queued_events <= 10_000


async def test_an_endless_stream_before_the_sync_fails_the_connect(channels):
    channel = await channels(sync=False, connect=False)
    channel.guest.flood(b"\x5a" * 65536)
    with pytest.raises(errors.ProtocolError) as caught:
        await asyncio.wait_for(channel.client.connect(channel.guest.path), 30)
    assert "without answering the sync" in caught.value.message
    assert channel.violations and channel.client._reader.buffered_bytes < 64


async def test_sync_replies_to_nonces_the_host_never_sent_are_cut_off(channels):
    channel = await channels(sync=False, connect=False)
    channel.guest.flood(AGENT_SYNC_MAGIC + b"n" * 16)
    with pytest.raises(errors.ProtocolError) as caught:
        await asyncio.wait_for(channel.client.connect(channel.guest.path), 30)
    assert "old nonces" in caught.value.message


async def test_a_tiny_frame_flood_costs_a_share_of_the_loop_and_others_keep_their_latency(channels):
    good = await channels()
    baseline = await ping_latencies(good.client, 50)
    hostile = await channels(answer=False)
    call = hostile.client.start(Ping())
    hostile.guest.next_request()
    received = 0

    async def drain() -> None:
        nonlocal received
        async for item in call:
            if isinstance(item, Chunk):
                received += len(item.data)

    reading = asyncio.create_task(drain())
    # 1-byte stdout frames for the pending call: each one legal, the whole a flood.
    hostile.guest.flood(raw(call.stream_id, b"x") * 26_000)
    await asyncio.sleep(0.3)  # past the reader's burst
    cpu_before, wall_before, received_before = time.thread_time(), time.perf_counter(), received
    during = await ping_latencies(good.client, 100)
    await asyncio.sleep(max(0.0, 2.0 - (time.perf_counter() - wall_before)))
    cpu, wall = time.thread_time() - cpu_before, time.perf_counter() - wall_before
    frames = received - received_before
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    assert hostile.client.connected  # each frame was legal: slowed, not killed
    megabytes = frames * 10 / 1e6
    print(
        f"\nping p50 {statistics.median(baseline) * 1e3:.2f} ms alone, "
        f"{statistics.median(during) * 1e3:.2f} ms (max {max(during) * 1e3:.1f} ms) beside the flood; "
        f"flood: {frames / wall:,.0f} frames/s = {megabytes / wall:.2f} MB/s read, "
        f"loop CPU {cpu / wall:.0%}, {cpu / megabytes * 1e3:.0f} ms per MB of 10-byte frames"
    )
    assert frames > 0
    assert cpu / wall < 0.6
    assert statistics.median(during) < 0.05
    assert max(during) < 0.5


async def test_a_well_behaved_channel_answers_while_another_guest_breaks_the_protocol(channels):
    good = await channels()
    hostile = await channels(answer=False)
    calls = [hostile.client.start(Ping()) for _ in range(3)]
    hostile.guest.write(os.urandom(1 << 20))
    latencies = await ping_latencies(good.client, 20)
    for call in calls:
        await fails_with_protocol_error(call.result())
    assert max(latencies) < 0.5
    assert good.client.connected and not good.violations


# ------------------------------------------------------------ any bytes at all


class _Transport:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(sorted(RAW_KINDS)), st.integers(1, 40_000)), min_size=1, max_size=12),
    st.data(),
)
def test_the_reader_delivers_every_frame_whole_however_the_reads_are_cut(sizes, data):
    # Frames bigger than a slice go to the decoder in one piece; that must not cut any.
    wire_frames = [Frame(kind, 7, bytes([index % 251]) * size) for index, (kind, size) in enumerate(sizes)]
    wire_frames += [Frame(FrameKind.STDOUT, 7, b"t")] * 2000  # 20 kB of tiny ones after them
    wire = b"".join(frame.to_bytes() for frame in wire_frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    asyncio.run(_read_in_pieces(wire, [0, *cuts, len(wire)], wire_frames))


async def _read_in_pieces(wire: bytes, cuts: list[int], expected: list[Frame]) -> None:
    frames: list[Frame] = []
    reader = _reader.GuestReader(lambda: None, frames.append, pytest.fail)
    decode, decoded = reader._decoder.feed, []

    def feed(piece: bytes) -> list[Frame]:
        decoded.append(decode(piece))
        return decoded[-1]

    reader._decoder.feed = feed  # type: ignore[method-assign]
    transport = _Transport()
    reader.start(transport)  # type: ignore[arg-type]
    reader.expect(b"n" * 16)
    reader.feed(AGENT_SYNC_MAGIC + b"n" * 16)
    for index, (start, end) in enumerate(itertools.pairwise(cuts)):
        reader.feed(wire[start:end])
        while index % 2 and reader._backlog:  # and every other read lands on a backlog
            await asyncio.sleep(0)
    while reader._backlog:
        await asyncio.sleep(0)
    assert frames == expected
    # Each piece is at most a slice beyond the frame it finished: tiny frames cost CPU.
    beyond = [sum(HEADER.size + len(frame.payload) for frame in batch[1:]) for batch in decoded]
    assert max(beyond) <= _reader.SLICE_BYTES
    assert reader.buffered_bytes == SYNC_BYTES - 1 and not transport.paused


valid_frames = st.builds(
    lambda kind, stream, payload: encode_frame(kind, stream, payload),
    st.sampled_from(list(FrameKind)),
    st.sampled_from([0, 1, 2, 3, 77, 2**32 - 1]),
    st.binary(max_size=64),
)
messages = st.builds(
    encode_message,
    st.sampled_from([1, 2, 9]),
    st.one_of(
        st.just(RESULT),
        st.fixed_dictionaries({"type": st.just("event"), "event": st.text(max_size=5), "data": st.just({})}),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ),
)
stream_pieces = st.lists(st.one_of(st.binary(max_size=64), valid_frames, messages), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_pieces)
def test_any_bytes_after_the_sync_leave_the_client_working_or_failed_with_protocol_error(pieces):
    asyncio.run(asyncio.wait_for(_any_bytes_scenario(b"".join(pieces)), 20))


async def _any_bytes_scenario(wire: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="ember-chan-") as directory:
        guest = FakeGuest(os.path.join(directory, "g.sock"), answer=False)
        violations: list[str] = []
        client = AgentClient("sandbox test", on_violation=violations.append)
        try:
            await client.connect(guest.path)
            calls = [client.start(Ping()), client.start(Ping())]
            guest.next_request(), guest.next_request()
            guest.send(wire)
            # Read all of it (or stopped reading): nothing is left waiting in the backlog.
            for _ in range(3):
                while client.connected and client._reader._backlog:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.02)
            assert client._reader.buffered_bytes <= len(wire) + 64
            for call in calls:
                assert not call.finished or call._outcome == RESULT["result"] or call._failure is not None
            if violations:
                assert len(violations) == 1 and not client.connected
                for call in calls:
                    assert call._outcome is not None or call._failure.code == "protocol_error"
                with pytest.raises(errors.ProtocolError):
                    client.start(Ping())
                return
            assert client.connected
            if client._reader._decoder.pending_bytes == 0:
                # At a frame boundary: the channel still works.
                guest.answer = True
                assert await asyncio.wait_for(client.request(Ping()), 5) == {"pong": True}
        finally:
            await client.close()
            await asyncio.to_thread(guest.close)
