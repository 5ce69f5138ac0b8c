"""A client for one short-lived process on the standard library's ``http.client``: the CLI's
``ember execute`` and ``ember run``.

Importing httpx (with the CLI of its own that it loads when click and rich are
installed, as they are beside uvicorn and typer) costs ~140 ms, most of what the
command would otherwise take on a warm daemon; http.client costs ~10. The rules
are the SDK's: its configuration (``_config``), its errors (``_errors``), its stream
lines (``_stream``), its models, and its local daemon's autostart (``_local``).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ember import errors
from ember.client._config import DEFAULT_REQUEST_TIMEOUT_S, ClientConfig, resolve_config, tls_verify
from ember.client._errors import error_from_response, unreachable
from ember.client._models import CommandResult, Execution, parse
from ember.client._stream import StreamedOutput, ended_without_result, parse_line, result_of

TextCallback = Callable[[str], Any]


class OneShot:
    """One connection to the daemon, one request at a time, for the sandbox calls the CLI
    makes in a run: create, run a cell or a command with its output streamed, kill."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or resolve_config(request_timeout=DEFAULT_REQUEST_TIMEOUT_S)
        self._connection: http.client.HTTPConnection | None = None

    def create(self, spec: dict[str, Any]) -> str:
        """A new sandbox (``POST /v1/sandboxes`` with `spec`); its id."""
        sandbox = self._json("POST", "/v1/sandboxes", spec, waits=True)
        if not isinstance(sandbox, dict) or not isinstance(sandbox.get("id"), str):
            raise errors.ProtocolError("the daemon's answer to a create has no sandbox id")
        return sandbox["id"]

    def kill(self, sandbox_id: str) -> None:
        """End the sandbox; one that already ended is no error. On a connection of its own:
        a run cut short (Ctrl-C) leaves the old one in the middle of a response."""
        self.close()
        try:
            self._json("DELETE", _sandbox_path(sandbox_id), None)
        except (errors.SandboxNotFoundError, errors.SandboxNotRunningError):
            pass

    def run_code(
        self, sandbox_id: str, body: dict[str, Any], on_stdout: TextCallback, on_stderr: TextCallback
    ) -> Execution:
        """A REPL cell (the body of ``POST .../code``), its output streamed to the callbacks."""
        output, event = self._events(f"{_sandbox_path(sandbox_id)}/code", body, on_stdout, on_stderr)
        return parse(Execution, output.fill(result_of(event, "execution")))

    def run_command(
        self, sandbox_id: str, body: dict[str, Any], on_stdout: TextCallback, on_stderr: TextCallback
    ) -> CommandResult:
        """A command (the body of ``POST .../commands``), its output streamed to the callbacks."""
        output, event = self._events(f"{_sandbox_path(sandbox_id)}/commands", body, on_stdout, on_stderr)
        return parse(CommandResult, output.fill(result_of(event, "command")))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> OneShot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _events(
        self, path: str, body: dict[str, Any], on_stdout: TextCallback, on_stderr: TextCallback
    ) -> tuple[StreamedOutput, dict[str, Any]]:
        """Follow an NDJSON stream to its result line, handing output text to the callbacks."""
        output = StreamedOutput()
        response = self._send("POST", f"{path}?{urlencode({'stream': 'true'})}", body, waits=True)
        try:
            for raw in response:
                event = parse_line(raw.decode("utf-8", "replace"))
                if event is None:
                    continue
                if event["type"] == "result":
                    response.read()  # the rest, so that the connection can carry the next request
                    return output, event
                text = output.add(event)
                if text is not None:
                    (on_stdout if event["type"] == "stdout" else on_stderr)(text)
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.config.base_url, f"the stream broke off: {exc!r}") from exc
        raise ended_without_result("POST", path)

    def _json(self, method: str, path: str, body: Any, waits: bool = False) -> Any:
        data = self._send(method, path, body, waits).read()
        try:
            return json.loads(data) if data else None
        except ValueError as exc:
            raise errors.ProtocolError(f"{method} {path}: the daemon's answer is not JSON") from exc

    def _send(self, method: str, path: str, body: Any, waits: bool) -> http.client.HTTPResponse:
        """A successful response, its body still to read; an error answer raises its EmberError.

        `waits`: the daemon answers when work in the sandbox ends, so no read limit applies.
        """
        try:
            try:
                response = self._request(method, path, body, waits)
            except ConnectionRefusedError:
                if not self.config.autostart:
                    raise
                # Nothing answered where no URL was configured: as the SDK does, start a
                # local daemon, then send again (a refused connection delivered nothing).
                from ember.client._local import ensure_local_daemon

                key = ensure_local_daemon(self.config.base_url, self.config.api_key)
                self.config = self.config.after_autostart(key)
                response = self._request(method, path, body, waits)
        except TimeoutError as exc:
            raise errors.ExecTimeoutError(
                f"no answer from the daemon at {self.config.base_url} within "
                f"{self.config.request_timeout_s} s (request_timeout)"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.config.base_url, str(exc) or type(exc).__name__) from exc
        if response.status >= 400:
            keyless = self.config.api_key is None
            raise error_from_response(response.status, response.read(), response.reason, keyless)
        return response

    def _request(self, method: str, path: str, body: Any, waits: bool) -> http.client.HTTPResponse:
        connection = self._connect()
        headers = {"Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection.request(method, urlsplit(self.config.base_url).path + path, body=content, headers=headers)
        if connection.sock is not None:
            connection.sock.settimeout(None if waits else self.config.request_timeout_s)
        return connection.getresponse()

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            url = urlsplit(self.config.base_url)
            port = url.port or (443 if url.scheme == "https" else 80)
            timeout = self.config.request_timeout_s
            context = tls_verify(self.config.base_url)
            connection: http.client.HTTPConnection
            if url.scheme == "https":
                assert not isinstance(context, bool)
                connection = http.client.HTTPSConnection(
                    url.hostname or "", port, timeout=timeout, context=context
                )
            else:
                connection = http.client.HTTPConnection(url.hostname or "", port, timeout=timeout)
            connection.connect()
            if connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
        return self._connection


def _sandbox_path(sandbox_id: str) -> str:
    """The sandbox's URL path, its id quoted whole: an id is never a path of its own."""
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}"
