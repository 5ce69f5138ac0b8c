"""Messages: typed decoding refuses what does not fit, round trips what does."""

from __future__ import annotations

import pytest

from ember.protocol import messages as m
from ember.protocol.codes import ErrorCode
from ember.protocol.framing import encode_message
from ember.protocol.wire import WireError


def test_requests_round_trip_through_their_wire_form():
    request = m.Exec(cmd="ls", env={"A": "1"}, pty=m.PtySize(cols=100, rows=30), timeout_s=2)
    parsed = m.parse_request(request.to_message())
    assert parsed == request
    assert isinstance(parsed.timeout_s, float)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"op": "file_stat"}, "missing field 'path'"),
        ({"op": "file_stat", "path": 3}, "expected a string"),
        ({"op": "exec", "cmd": "ls", "env": {"A": 1}}, "env.A: expected a string"),
        ({"op": "exec", "cmd": "ls", "background": "yes"}, "expected true or false"),
        ({"op": "file_read", "path": "/x", "offset": True}, "expected an integer"),
        ({"op": "proc_resize", "pid": 1, "size": {"cols": "80"}}, "size: cols"),
        ({"path": "/x"}, "without an 'op'"),
        ({"op": "file_read", "path": "/x", "offset": 2**64}, "does not fit in 64 bits"),
        ({"op": "exec", "cmd": "ls", "timeout_s": float("nan")}, "expected a finite number"),
        ({"op": "exec", "cmd": "ls", "timeout_s": float("inf")}, "expected a finite number"),
        ({"op": "file_stat", "path": "/a\udc80"}, "path: not valid Unicode text"),
        ({"op": "exec", "cmd": "ls", "env": {"\ud800": "1"}}, "env key: not valid Unicode text"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(message, fragment):
    with pytest.raises(WireError, match=fragment) as caught:
        m.parse_request(message)
    assert caught.value.code == ErrorCode.INVALID_REQUEST


def test_unknown_operation_has_its_own_code():
    with pytest.raises(WireError) as caught:
        m.parse_request({"op": "format_disk"})
    assert caught.value.code == ErrorCode.UNKNOWN_OPERATION


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert m.parse_request({"op": "ping", "future": 1}) == m.Ping()


def test_nested_results_decode_into_their_models():
    execution = m.Execution.from_wire(
        {"results": [{"data": {"text/plain": "2"}, "is_main_result": True}], "execution_count": 3}
    )
    assert execution.results[0].data == {"text/plain": "2"}
    assert execution.error is None


def test_a_message_with_text_utf8_cannot_carry_is_refused_before_it_is_sent():
    with pytest.raises(WireError, match="not valid Unicode"):
        encode_message(1, m.FileStat(path="/a\ud800").to_message())
