"""Results the SDK hands back: attribute and mapping views, rich formats, shape checks."""

from __future__ import annotations

import base64
import json

import pytest

from ember.client._models import CommandResult, Execution, SandboxInfo, parse, parse_list
from ember.errors import ProtocolError

API_EXECUTION = {
    "stdout": "1\n",
    "stderr": "",
    "results": [
        {"data": {"text/plain": "2", "application/json": '{"a": [1]}'}, "is_main_result": True},
        {"data": {"image/png": base64.b64encode(b"\x89PNG...").decode()}, "is_main_result": False},
    ],
    "error": {"name": "ValueError", "value": "bad", "traceback": "Traceback ...\n"},
    "execution_count": 3,
    "execution_time": 0.0021,
    "timed_out": False,
    "restarted": False,
    "exit_code": None,
}


def test_execution_reads_as_attributes() -> None:
    execution = parse(Execution, API_EXECUTION)
    assert execution.stdout == "1\n"
    assert execution.execution_time == 0.0021
    assert execution.error is not None and execution.error.name == "ValueError"
    assert execution.text == "2"


def test_execution_reads_as_the_api_mapping() -> None:
    execution = parse(Execution, API_EXECUTION)
    assert execution["stdout"] == "1\n"
    assert execution["execution_time"] == 0.0021
    assert "stdout" in execution
    assert "nonsense" not in execution
    assert execution.get("nonsense") is None
    assert dict(execution) == API_EXECUTION
    assert len(execution) == len(API_EXECUTION)
    assert json.loads(json.dumps(dict(execution))) == API_EXECUTION
    with pytest.raises(KeyError):
        execution["nonsense"]


def test_rich_results_decode_their_formats() -> None:
    main, image = parse(Execution, API_EXECUTION).results
    assert main.is_main_result and main.text == "2" and str(main) == "2"
    assert main.json == {"a": [1]}
    assert main.png is None and main.html is None
    assert image.png == b"\x89PNG..."
    assert image.text is None and str(image) == ""


def test_execution_of_the_wrong_shape_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="results"):
        parse(Execution, {**API_EXECUTION, "results": "nope"})


def test_command_result_keeps_a_non_zero_exit_as_data() -> None:
    result = parse(CommandResult, {"pid": 4, "exit_code": 3, "stdout": "x", "stderr": ""})
    assert (result.exit_code, result.stdout, result.timed_out) == (3, "x", False)
    assert repr(result).startswith("CommandResult(")


def test_listing_without_its_list_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_list(SandboxInfo, {"items": []}, "sandboxes")
    assert parse_list(SandboxInfo, {"sandboxes": []}, "sandboxes") == []


def test_sandbox_info_ignores_fields_it_does_not_know() -> None:
    info = parse(SandboxInfo, {"id": "a", "state": "running", "vcpus": 1, "memory_mb": 512, "new": 1})
    assert info.id == "a" and info.end_reason is None
