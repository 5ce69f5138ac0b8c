"""Flow control on one stream: the sender's credit and the receiver's window, in any interleaving.

One machine plays a stream end to end: a sender spending credit (waiting while
it has none), data frames and CREDIT frames in flight, a receiver holding what
arrived and a consumer taking it, plus a peer that lies (grants nothing, or more
than was spent; sends past the window) and a stream that ends under a waiting sender.
"""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ember.protocol.framing import INITIAL_WINDOW, ProtocolError
from ember.protocol.window import ReceiveWindow, SendWindow

STREAM = 7


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


class StreamUnderFlowControl(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sending: asyncio.Task[int] | None = None
        self.wanted = 0
        self.data_in_flight: deque[int] = deque()
        self.credit_in_flight: deque[int] = deque()
        self.closed = False

    @initialize(size=st.sampled_from([1, 2, 3, 4, 5, 8, 13, 64, 1000, INITIAL_WINDOW]))
    def open_stream(self, size: int) -> None:
        self.size = size
        self.sender = SendWindow(STREAM, size)
        self.receiver = ReceiveWindow(STREAM, size)

    def teardown(self) -> None:
        if self.sending is not None:
            self.sending.cancel()
            self.loop.run_until_complete(asyncio.gather(self.sending, return_exceptions=True))
        self.loop.close()

    def settle(self) -> None:
        """Let a sender that was woken run; note what it spent."""
        self.loop.run_until_complete(_turns(3))
        if self.sending is not None and self.sending.done():
            spent = self.sending.result()
            self.sending = None
            if spent:
                self.data_in_flight.append(spent)
            else:
                assert self.closed, "a sender got no credit from a stream still open"

    # ---------------------------------------------------------------- the sender

    @precondition(lambda self: self.sending is None)
    @rule(share=st.floats(0.01, 2.5))
    def send(self, share: float) -> None:
        self.wanted = max(1, int(self.size * share))
        credit = self.sender.credit
        self.sending = self.loop.create_task(self.sender.acquire(self.wanted))
        self.settle()
        if credit:
            assert self.sending is None  # it had credit: it did not wait
            assert self.data_in_flight[-1] == min(self.wanted, credit)
            assert self.sender.credit == credit - self.data_in_flight[-1]

    @rule()
    def stream_ends(self) -> None:
        self.sender.close()
        self.closed = True
        self.settle()

    # ---------------------------------------------------------------- the receiver and its consumer

    @precondition(lambda self: self.data_in_flight)
    @rule()
    def data_arrives(self) -> None:
        self.receiver.receive(self.data_in_flight.popleft())

    @precondition(lambda self: self.receiver.held)
    @rule(data=st.data())
    def consumer_takes(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(1, self.receiver.held))
        before = self.receiver.unacknowledged
        credit = self.receiver.consume(size)
        if credit:
            assert credit == before + size and self.receiver.unacknowledged == 0
            self.credit_in_flight.append(credit)
        else:
            assert self.receiver.unacknowledged == before + size

    @precondition(lambda self: self.credit_in_flight)
    @rule()
    def credit_arrives(self) -> None:
        waiting = self.sending is not None
        self.sender.grant(self.credit_in_flight.popleft())
        self.settle()
        assert self.sending is None  # a waiting sender woke and took some of it
        if waiting:
            assert self.data_in_flight[-1] <= self.wanted

    # ---------------------------------------------------------------- a peer that breaks the rules

    @rule(data=st.data())
    def a_grant_of_nothing_or_more_than_was_spent_is_refused(self, data: st.DataObject) -> None:
        spent = self.size - self.sender.credit
        amount = data.draw(st.integers(max_value=0) | st.integers(min_value=spent + 1), label="amount")
        with pytest.raises(ProtocolError, match="credit"):
            self.sender.grant(amount)
        assert self.sender.credit == self.size - spent
        self.settle()

    @rule(data=st.data())
    def data_past_the_window_is_refused(self, data: st.DataObject) -> None:
        held = self.receiver.held
        size = data.draw(st.integers(self.size - held + 1, 2 * self.size + 1), label="size")
        with pytest.raises(ProtocolError, match="flow-control window"):
            self.receiver.receive(size)
        assert self.receiver.held == held

    # ---------------------------------------------------------------- what always holds

    @invariant()
    def credit_and_holdings_stay_within_the_window(self) -> None:
        assert 0 <= self.sender.credit <= self.size
        assert 0 <= self.receiver.held <= self.size
        assert 0 <= self.receiver.unacknowledged < max(1, self.size // 4)

    @invariant()
    def every_byte_of_the_window_is_somewhere(self) -> None:
        assert (
            self.sender.credit
            + sum(self.data_in_flight)
            + self.receiver.held
            + self.receiver.unacknowledged
            + sum(self.credit_in_flight)
            == self.size
        )

    @invariant()
    def a_sender_waits_exactly_when_it_has_no_credit(self) -> None:
        if self.sending is not None:
            assert not self.sending.done()
            assert self.sender.credit == 0 and not self.closed

    @invariant()
    def a_stalled_sender_always_has_credit_coming(self) -> None:
        # Once the consumer has taken everything, what the sender lacks is on its way back.
        if self.sender.credit == 0 and not self.data_in_flight and not self.receiver.held:
            assert sum(self.credit_in_flight) > 0


TestStreamUnderFlowControl = StreamUnderFlowControl.TestCase
TestStreamUnderFlowControl.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def test_a_sender_must_want_a_byte_and_a_consumer_take_only_what_arrived() -> None:
    with pytest.raises(ValueError):
        asyncio.run(SendWindow(STREAM).acquire(0))
    receiver = ReceiveWindow(STREAM)
    receiver.receive(10)
    with pytest.raises(ValueError):
        receiver.consume(11)
    with pytest.raises(ValueError):
        receiver.consume(-1)


def test_credit_returns_in_quarters_of_the_window() -> None:
    receiver = ReceiveWindow(STREAM)
    receiver.receive(INITIAL_WINDOW)
    assert receiver.consume(INITIAL_WINDOW // 4 - 1) == 0
    assert receiver.consume(1) == INITIAL_WINDOW // 4
    assert receiver.consume(INITIAL_WINDOW // 2) == INITIAL_WINDOW // 2
