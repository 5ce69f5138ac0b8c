"""The CLI's one-shot client against a loopback HTTP server that answers as told: what it sends,
and what it makes of good answers, error answers, broken streams and no server at all."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ember import errors
from ember.client._config import ClientConfig
from ember.client._errors import DaemonUnreachableError
from ember.client._oneshot import OneShot

#: (method, path) -> (status, body lines); each line is sent as it is, then the connection idles.
Answers = dict[tuple[str, str], tuple[int, list[bytes]]]


class _Server(ThreadingHTTPServer):
    answers: Answers
    seen: list[dict[str, Any]]


#: Where an answer's body is cut: the connection closes there, in the middle of a chunked body.
CUT = b"<cut>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append(
            {"method": self.command, "path": self.path, "body": body, "headers": self.headers}
        )
        status, lines = self.server.answers.get((self.command, self.path), (404, [b'{"code": "not_found"}']))
        self.send_response(status)
        if CUT in lines:  # chunked, as the daemon streams, and closed before the last chunk
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines[: lines.index(CUT)]:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.close_connection = True
            return
        self.send_header("Content-Length", str(sum(len(line) for line in lines)))
        self.end_headers()
        for line in lines:
            self.wfile.write(line)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.answers, httpd.seen = {}, []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _client(server: _Server, api_key: str | None = "k") -> OneShot:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return OneShot(ClientConfig(base_url=url, api_key=api_key, request_timeout_s=10, autostart=False))


def _lines(*events: dict[str, Any]) -> list[bytes]:
    return [json.dumps(event).encode() + b"\n" for event in events]


def test_a_cell_streams_its_output_and_ends_with_its_execution(server: _Server) -> None:
    server.answers[("POST", "/v1/sandboxes/sb/code?stream=true")] = (
        200,
        _lines(
            {"type": "stdout", "text": "hello\n"},
            {"type": "stderr", "text": "warn\n"},
            {
                "type": "result",
                "execution": {"results": [{"data": {"text/plain": "2"}}], "execution_count": 3},
            },
        ),
    )
    out: list[str] = []
    err: list[str] = []
    with _client(server) as client:
        execution = client.run_code("sb", {"code": "1 + 1"}, out.append, err.append)
    assert (out, err) == (["hello\n"], ["warn\n"])
    assert execution.stdout == "hello\n" and execution.stderr == "warn\n"
    assert execution.results[0].text == "2" and execution.execution_count == 3
    (sent,) = server.seen
    assert sent["body"] == {"code": "1 + 1"}
    assert sent["headers"]["Authorization"] == "Bearer k"


def test_create_then_kill_on_one_client(server: _Server) -> None:
    server.answers[("POST", "/v1/sandboxes")] = (201, [b'{"id": "new1", "state": "running"}'])
    server.answers[("DELETE", "/v1/sandboxes/new1")] = (
        404,
        [b'{"code": "sandbox_not_found", "message": "gone"}'],
    )
    with _client(server) as client:
        assert client.create({"timeout": 300}) == "new1"
        client.kill("new1")  # one that already ended is no error
    assert [(s["method"], s["path"]) for s in server.seen] == [
        ("POST", "/v1/sandboxes"),
        ("DELETE", "/v1/sandboxes/new1"),
    ]


def test_an_error_answer_is_its_typed_error_with_the_hint_for_a_missing_key(server: _Server) -> None:
    server.answers[("POST", "/v1/sandboxes/sb/code?stream=true")] = (
        401,
        [b'{"code": "unauthorized", "message": "no key"}'],
    )
    with _client(server, api_key=None) as client, pytest.raises(errors.AuthenticationError) as raised:
        client.run_code("sb", {"code": "1"}, print, print)
    assert "set EMBER_API_KEY" in raised.value.message
    assert "Authorization" not in server.seen[0]["headers"]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (_lines({"type": "stdout", "text": "partial"}), errors.ProtocolError),  # cut before the result
        ([b"not json\n"], errors.ProtocolError),
        (
            _lines({"type": "error", "code": "sandbox_dead", "message": "the guest died"}),
            errors.SandboxDeadError,
        ),
        (_lines({"type": "result"}), errors.ProtocolError),  # a result without its execution
    ],
)
def test_a_broken_stream_raises_a_coded_error(server: _Server, lines: list[bytes], error: type) -> None:
    server.answers[("POST", "/v1/sandboxes/sb/code?stream=true")] = (200, lines)
    with _client(server) as client, pytest.raises(error):
        client.run_code("sb", {"code": "1"}, lambda text: None, lambda text: None)


def test_a_stream_cut_by_the_daemon_is_a_coded_error_after_what_streamed(server: _Server) -> None:
    """The daemon dies (or the connection drops) in the middle of a cell: what had streamed
    is delivered, then a coded error, never a traceback."""
    lines = [*_lines({"type": "stdout", "text": "partial\n"}), CUT]
    server.answers[("POST", "/v1/sandboxes/sb/code?stream=true")] = (200, lines)
    out: list[str] = []
    with _client(server) as client, pytest.raises(errors.ProtocolError, match="without a result"):
        client.run_code("sb", {"code": "1"}, out.append, out.append)
    assert out == ["partial\n"]


def test_a_create_answer_without_an_id_is_a_protocol_error(server: _Server) -> None:
    server.answers[("POST", "/v1/sandboxes")] = (201, [b'{"state": "running"}'])
    with _client(server) as client, pytest.raises(errors.ProtocolError):
        client.create({})


def test_no_daemon_is_daemon_unreachable_with_what_to_do(server: _Server) -> None:
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    config = ClientConfig(
        base_url=f"http://127.0.0.1:{port}", api_key="k", request_timeout_s=5, autostart=False
    )
    with OneShot(config) as client, pytest.raises(DaemonUnreachableError) as raised:
        client.create({})
    assert "ember serve" in raised.value.message


def test_a_sandbox_id_is_quoted_whole(server: _Server) -> None:
    """An id with spaces, ``?`` or ``#`` names one sandbox: it reaches the daemon as one path segment."""
    with _client(server) as client, pytest.raises(errors.EmberError):
        client.run_code("a b?c#d", {"code": "1"}, print, print)
    assert server.seen[0]["path"] == "/v1/sandboxes/a%20b%3Fc%23d/code?stream=true"
