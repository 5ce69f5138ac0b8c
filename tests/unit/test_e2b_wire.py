"""The E2B face's pure parts: Connect framing and error codes, routing, tokens, result and event shapes."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from ember import errors
from ember.agent.watch import IN_CREATE, IN_ISDIR, parse_events
from ember.protocol import messages as m
from ember.server.e2b.connect import ConnectError, connect_error, envelope, read_envelopes
from ember.server.e2b.control import NetworkConfig
from ember.server.e2b.interpreter import result_line
from ember.server.e2b.plane import AccessTokens, SandboxPlane
from ember.server.e2b.process import end_event


def _request(chunks: list[bytes]) -> Request:
    pending = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    pending.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


async def _messages(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [message async for message in read_envelopes(_request(chunks))]


def test_envelopes_split_anywhere_decode_in_order() -> None:
    data = envelope({"start": {"process": {"pid": 7}}}) + envelope({"data": {"input": {"stdin": "aGk="}}})
    for cut in range(len(data) + 1):
        got = asyncio.run(_messages([data[:cut], data[cut:]]))
        assert got == [{"start": {"process": {"pid": 7}}}, {"data": {"input": {"stdin": "aGk="}}}]


def test_end_of_stream_and_bad_envelopes() -> None:
    assert asyncio.run(_messages([envelope({"a": 1}) + envelope({}, 0x02) + envelope({"b": 2})])) == [
        {"a": 1}
    ]
    with pytest.raises(ConnectError, match="inside a message"):
        asyncio.run(_messages([envelope({"a": 1})[:-1]]))
    with pytest.raises(ConnectError) as compressed:
        asyncio.run(_messages([struct.pack(">BI", 1, 2) + b"{}"]))
    assert compressed.value.code == "unimplemented"
    with pytest.raises(ConnectError) as not_object:
        asyncio.run(_messages([struct.pack(">BI", 0, 2) + b"[]"]))
    assert not_object.value.code == "invalid_argument"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.PathNotFoundError("x"), "not_found"),
        (errors.ProcessNotFoundError("x"), "not_found"),
        (errors.AlreadyExistsError("x"), "already_exists"),
        (errors.InvalidRequestError("x"), "invalid_argument"),
        (errors.NotADirectoryError("x"), "invalid_argument"),
        (errors.AuthenticationError("x"), "unauthenticated"),
        (errors.ExecTimeoutError("x"), "deadline_exceeded"),
        (errors.SandboxDeadError("x"), "unavailable"),
        (errors.DiskFullError("x"), "resource_exhausted"),
        (errors.AgentUnavailableError("x"), "internal"),
        (RuntimeError("boom"), "internal"),
    ],
)
def test_ember_errors_become_connect_codes(error: Exception, code: str) -> None:
    assert connect_error(error).code == code


def _scope(headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


def test_plane_finds_sandbox_and_port_by_header_or_host() -> None:
    plane = SandboxPlane(None, None, None, {}, None, domain="sb.example.com")  # type: ignore[arg-type]
    assert plane._target(_scope({"e2b-sandbox-id": "abc", "e2b-sandbox-port": "49999"})) == ("abc", "49999")
    assert plane._target(_scope({"host": "49983-abc123.sb.example.com:8080"})) == ("abc123", "49983")
    assert plane._target(_scope({"host": "49983-abc123.other.com"})) is None
    assert plane._target(_scope({"host": "127.0.0.1:7070"})) is None
    without_domain = SandboxPlane(None, None, None, {}, None)  # type: ignore[arg-type]
    assert without_domain._target(_scope({"host": "49983-abc123.sb.example.com"})) is None


def test_access_tokens_are_stable_per_secret_and_distinct_per_sandbox(tmp_path: Path) -> None:
    tokens = AccessTokens(tmp_path / "secret")
    first = tokens.token("a")
    assert AccessTokens(tmp_path / "secret").token("a") == first
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert tokens.token("b") != first
    assert tokens.check("a", first) and not tokens.check("b", first) and not tokens.check("a", None)
    assert AccessTokens(tmp_path / "other").token("a") != first


def test_rich_results_map_onto_e2b_fields() -> None:
    bundle = {
        "text/plain": "Fig",
        "image/png": "iVBO",
        "application/json": '{"a": 1}',
        "application/x-y": "z",
    }
    line = result_line(m.RichResult(data=bundle, is_main_result=True))
    assert line == {
        "type": "result",
        "is_main_result": True,
        "text": "Fig",
        "png": "iVBO",
        "json": {"a": 1},
        "extra": {"application/x-y": "z"},
    }


def test_exit_events_read_like_envd() -> None:
    assert end_event(m.ProcessExit(pid=1, exit_code=3)) == {
        "event": {"end": {"exitCode": 3, "exited": True, "status": "exit status 3"}}
    }
    killed = end_event(m.ProcessExit(pid=1, exit_code=None, signal=9))["event"]["end"]
    assert killed["status"] == "signal: killed" and not killed["exited"]


def test_network_rules_are_validated() -> None:
    assert NetworkConfig.model_validate({"allowOut": ["10.0.0.0/8", "pypi.org"]}).allow_out
    with pytest.raises(ValidationError):
        NetworkConfig.model_validate({"denyOut": ["not a host"]})
    with pytest.raises(ValidationError):
        NetworkConfig.model_validate({"allowOut": "1.2.3.4"})


def test_inotify_events_parse_with_padding() -> None:
    raw = struct.pack("iIII", 1, IN_CREATE | IN_ISDIR, 0, 8) + b"sub\0\0\0\0\0"
    raw += struct.pack("iIII", 2, IN_CREATE, 0, 0)
    assert parse_events(raw) == [(1, IN_CREATE | IN_ISDIR, "sub"), (2, IN_CREATE, "")]
