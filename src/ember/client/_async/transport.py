"""The one HTTP connection an SDK object tree talks through: auth, errors, streams, auto-start.

A sandbox and its ``commands``/``files``/``pty`` share one transport. Every error
answer becomes a typed ``EmberError``; a refused connection becomes
``DaemonUnreachableError``, after starting a local daemon once when the
configuration allows it (see ``_local``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ember import errors
from ember.client._backends import CHUNK_BYTES, aemit, aiter_chunks, arun_blocking
from ember.client._config import ClientConfig, tls_verify
from ember.client._errors import error_from_response, unreachable
from ember.client._local import ensure_local_daemon
from ember.client._stream import StreamedOutput, ended_without_result, parse_line

TextCallback = Callable[[str], Any]


class AsyncTransport:
    """Owns one ``httpx.AsyncClient`` for one daemon URL and key."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=config.request_timeout_s,
            headers=_auth(config.api_key),
            verify=tls_verify(config.base_url),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: Any = None,
        waits: bool = False,
    ) -> httpx.Response:
        """Send one request and return its successful response (already read).

        `waits`: the daemon answers only when work in the sandbox ends, so no read limit
        applies (the sandbox enforces the work's own timeout).
        """
        response = await self._send(method, path, json=json, params=params, content=content, waits=waits)
        if response.is_error:
            raise _error_of(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise errors.ProtocolError(f"{method} {path}: the daemon's answer is not JSON") from exc

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, *, json: Any = None, params: Any = None, waits: bool = False
    ) -> AsyncIterator[httpx.Response]:
        """A successful response whose body is read as it arrives."""
        response = await self._send(method, path, json=json, params=params, waits=waits, stream=True)
        try:
            if response.is_error:
                await response.aread()
                raise _error_of(response)
            yield response
        except httpx.TransportError as exc:
            raise self._translate(exc) from exc
        finally:
            await response.aclose()

    async def events(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
    ) -> tuple[dict[str, Any], StreamedOutput]:
        """Follow an NDJSON stream to its result line, handing output text to the callbacks
        (and other lines, a build's stages, to ``on_event``)."""
        output = StreamedOutput()
        async with self.stream(
            method, path, json=json, params={**(params or {}), "stream": "true"}, waits=True
        ) as response:
            async for line in response.aiter_lines():
                event = parse_line(line)
                if event is None:
                    continue
                if event["type"] == "result":
                    return event, output
                text = output.add(event)
                if text is not None:
                    await aemit(on_stdout if event["type"] == "stdout" else on_stderr, text)
                else:
                    await aemit(on_event, event)
        raise ended_without_result(method, path)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: Any = None,
        waits: bool = False,
        stream: bool = False,
    ) -> httpx.Response:
        timeout = (
            httpx.Timeout(self.config.request_timeout_s, read=None) if waits else httpx.USE_CLIENT_DEFAULT
        )

        headers = None
        if isinstance(content, bytes) and len(content) > CHUNK_BYTES:
            # httpcore's sync stream copies the rest of a body at each socket send, so a
            # 100 MB body cost its sender 0.5 s of CPU: a large body goes in chunks, its
            # length said up front (the daemon refuses one over its limit before it is sent).
            headers, content = {"Content-Length": str(len(content))}, aiter_chunks(content)

        async def send() -> httpx.Response:
            request = self._client.build_request(
                method, path, json=json, params=params, content=content, headers=headers, timeout=timeout
            )
            return await self._client.send(request, stream=stream)

        try:
            try:
                return await send()
            except httpx.ConnectError:
                if not self.config.autostart:
                    raise
            # Nothing answered where no URL was configured: start a local daemon, then send
            # again (a refused connection never delivered the request, so this is safe).
            key = await arun_blocking(ensure_local_daemon, self.config.base_url, self.config.api_key)
            self.config = self.config.after_autostart(key)
            self._client.headers.update(_auth(self.config.api_key))
            return await send()
        except httpx.TransportError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: httpx.TransportError) -> errors.EmberError:
        if isinstance(exc, httpx.TimeoutException):
            return errors.ExecTimeoutError(
                f"no answer from the daemon at {self.config.base_url} within "
                f"{self.config.request_timeout_s} s (request_timeout): {exc!r}"
            )
        return unreachable(self.config.base_url, str(exc) or type(exc).__name__)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _error_of(response: httpx.Response) -> errors.EmberError:
    keyless = "Authorization" not in response.request.headers
    return error_from_response(response.status_code, response.content, response.reason_phrase, keyless)
