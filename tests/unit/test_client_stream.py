"""NDJSON stream lines: events pass through, error lines raise their typed exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.client._stream import StreamedOutput, parse_line, result_of
from ember.errors import EmberError, ExecFailedError, ProtocolError, SandboxNotFoundError


def test_blank_lines_are_skipped() -> None:
    assert parse_line("") is None
    assert parse_line("  \r") is None


def test_output_events_pass_through() -> None:
    assert parse_line('{"type": "stdout", "text": "hi\\n"}') == {"type": "stdout", "text": "hi\n"}


def test_error_line_raises_the_exception_of_its_code() -> None:
    with pytest.raises(SandboxNotFoundError) as caught:
        parse_line('{"type": "error", "code": "sandbox_not_found", "message": "no sandbox x"}')
    assert caught.value.code == "sandbox_not_found"
    assert caught.value.message == "no sandbox x"


def test_error_line_with_unknown_code_keeps_the_code() -> None:
    with pytest.raises(EmberError) as caught:
        parse_line('{"type": "error", "code": "brand_new_code", "message": "m"}')
    assert caught.value.code == "brand_new_code"


def test_error_line_without_fields_still_raises_an_ember_error() -> None:
    with pytest.raises(EmberError):
        parse_line('{"type": "error"}')


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '{"text": "no type"}', '{"type": 3}'])
def test_malformed_lines_are_protocol_errors(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_line(line)


@given(st.text())
def test_any_line_is_an_event_nothing_or_an_ember_error(line: str) -> None:
    try:
        event = parse_line(line)
    except EmberError:
        return
    assert event is None or isinstance(event["type"], str)


def test_streamed_text_fills_the_empty_output_of_the_result() -> None:
    output = StreamedOutput()
    for event in (
        {"type": "start", "pid": 4},
        {"type": "stdout", "text": "a"},
        {"type": "stderr", "text": "e"},
        {"type": "stdout", "text": "b"},
    ):
        output.add(event)
    result = output.fill({"pid": 4, "exit_code": 0, "stdout": "", "stderr": ""})
    assert (result["stdout"], result["stderr"]) == ("ab", "e")


def test_output_the_result_already_carries_is_kept() -> None:
    output = StreamedOutput()
    output.add({"type": "stdout", "text": "streamed"})
    assert output.fill({"stdout": "final"})["stdout"] == "final"


def test_output_event_without_text_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        StreamedOutput().add({"type": "stdout"})


def test_result_line_must_carry_its_object() -> None:
    line = json.loads('{"type": "result", "execution": {"stdout": ""}}')
    assert result_of(line, "execution") == {"stdout": ""}
    with pytest.raises(ProtocolError):
        result_of(line, "command")


def test_exec_failed_code_maps_to_its_class() -> None:
    with pytest.raises(ExecFailedError):
        parse_line('{"type": "error", "code": "exec_failed", "message": "no such user"}')
