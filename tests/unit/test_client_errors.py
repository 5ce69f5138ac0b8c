"""HTTP error answers become the typed exceptions of ember.errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember import errors
from ember.client._errors import DaemonUnreachableError, error_from_response, unreachable
from ember.protocol.codes import ErrorCode


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "sandbox_not_found", errors.SandboxNotFoundError),
        (401, "unauthorized", errors.AuthenticationError),
        (400, "invalid_request", errors.InvalidRequestError),
        (408, "exec_timeout", errors.ExecTimeoutError),
        (404, "file_not_found", errors.PathNotFoundError),
        (413, "payload_too_large", errors.PayloadTooLargeError),
    ],
)
def test_error_body_maps_to_the_class_of_its_code(status: int, code: str, cls: type) -> None:
    error = error_from_response(status, f'{{"code": "{code}", "message": "what to do"}}'.encode())
    assert type(error) is cls
    assert error.code == code
    assert error.message == "what to do"
    assert str(error) == f"what to do [{code}]"


def test_unknown_code_keeps_its_code() -> None:
    error = error_from_response(418, b'{"code": "teapot", "message": "short and stout"}')
    assert type(error) is errors.EmberError
    assert error.code == "teapot"


def test_body_without_code_is_mapped_by_status() -> None:
    error = error_from_response(404, b'{"detail": "Not Found"}')
    assert type(error) is errors.RouteNotFoundError
    assert error.message == "Not Found"
    assert error.code == "not_found"


def test_non_json_server_error_keeps_the_body_text_and_its_status() -> None:
    error = error_from_response(502, b"<html>Bad Gateway</html>", "Bad Gateway")
    assert type(error) is errors.HttpError
    assert "Bad Gateway" in error.message
    assert (error.code, error.status) == ("http_error", 502)


def test_empty_body_uses_the_reason_phrase() -> None:
    error = error_from_response(401, b"", "Unauthorized")
    assert isinstance(error, errors.AuthenticationError)
    assert error.message == "Unauthorized"


@given(st.integers(min_value=400, max_value=599), st.binary(max_size=300))
def test_any_error_answer_becomes_an_ember_error(status: int, body: bytes) -> None:
    error = error_from_response(status, body)
    assert isinstance(error, errors.EmberError)
    assert error.code in {code.value for code in ErrorCode}


def test_unreachable_error_says_where_and_how_to_start_a_daemon() -> None:
    error = unreachable("http://127.0.0.1:7070", "connection refused")
    assert isinstance(error, DaemonUnreachableError)
    assert isinstance(error, ConnectionError)
    assert "http://127.0.0.1:7070" in error.message
    assert "ember serve" in error.message
    assert error.code == "daemon_unreachable"


def test_every_error_class_has_a_code_of_the_enum_and_a_line_in_the_tree() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.EmberError)]
    codes = {code.value for code in ErrorCode}
    for cls in [*classes, DaemonUnreachableError]:
        assert cls.code in codes, cls
        if cls is not DaemonUnreachableError:
            assert f" {cls.__name__} " in errors.__doc__, f"{cls.__name__} is missing from the errors tree"
