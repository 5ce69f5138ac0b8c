"""The Connect protocol (JSON codec) on the server side: unary calls, server streams, client streams.

E2B's SDKs speak Connect to the in-sandbox daemon (``/process.Process/Start``,
``/filesystem.Filesystem/Stat``, ...) with ``application/json`` bodies for unary
calls and ``application/connect+json`` envelopes for streams. The framing is
small (a 5-byte envelope header, an end-of-stream envelope carrying the error)
and JSON maps straight onto dicts, so it is written here rather than taken from
the ``connectrpc`` package: its server needs protobuf message classes generated
from E2B's ``.proto`` files, which would make the daemon depend on the client
SDK (and a protobuf runtime) just to move a few JSON fields.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ember import errors

STREAM_TYPE = "application/connect+json"
_END_STREAM = 0x02
_COMPRESSED = 0x01
_HEADER = struct.Struct(">BI")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Connect error codes and the HTTP status a unary error carries.
HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "unauthenticated": 401,
}

Message = dict[str, Any]
Emit = Callable[[Message], Awaitable[None]]
T = TypeVar("T")


class ConnectError(Exception):
    """An error as Connect carries it: a code from ``HTTP_STATUS`` and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def connect_error(exc: BaseException) -> ConnectError:
    """The Connect error for an Ember error (or anything else), for E2B's SDK to map."""
    if isinstance(exc, ConnectError):
        return exc
    if not isinstance(exc, errors.EmberError):
        return ConnectError("internal", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, errors.AlreadyExistsError):
        code = "already_exists"
    elif isinstance(exc, errors.NotFoundError):
        code = "not_found"
    elif isinstance(exc, errors.AuthenticationError):
        code = "unauthenticated"
    elif isinstance(exc, errors.PermissionDeniedError):
        code = "permission_denied"
    elif isinstance(exc, errors.ExecTimeoutError):
        code = "deadline_exceeded"
    elif isinstance(exc, errors.SandboxDeadError | errors.SandboxNotRunningError):
        code = "unavailable"
    elif isinstance(exc, errors.DiskFullError | errors.ResourceExhaustedError):
        code = "resource_exhausted"
    elif isinstance(exc, errors.InvalidRequestError | errors.ConflictError):
        code = "invalid_argument"
    else:
        code = "internal"
    return ConnectError(code, exc.message)


def _error_body(exc: ConnectError) -> Message:
    return {"code": exc.code, "message": exc.message}


def envelope(payload: Message, flags: int = 0) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(data)) + data


async def read_envelopes(request: Request) -> AsyncIterator[Message]:
    """The JSON messages of a streamed request body, one per envelope, as they arrive."""
    buffer = bytearray()
    async for chunk in request.stream():
        buffer.extend(chunk)
        while len(buffer) >= _HEADER.size:
            flags, size = _HEADER.unpack_from(buffer)
            if flags & _COMPRESSED:
                raise ConnectError("unimplemented", "compressed messages are not supported")
            if size > MAX_MESSAGE_BYTES:
                raise ConnectError("resource_exhausted", f"message over {MAX_MESSAGE_BYTES} bytes")
            if len(buffer) < _HEADER.size + size:
                break
            data = bytes(buffer[_HEADER.size : _HEADER.size + size])
            del buffer[: _HEADER.size + size]
            if flags & _END_STREAM:
                return
            yield _decode(data)
    if buffer:
        raise ConnectError("invalid_argument", "the request ended inside a message")


def _decode(data: bytes) -> Message:
    try:
        message = json.loads(data) if data else {}
    except ValueError as exc:
        raise ConnectError("invalid_argument", f"the message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ConnectError("invalid_argument", "the message is not a JSON object")
    return message


def timeout_s(request: Request) -> float | None:
    """The call's deadline from ``Connect-Timeout-Ms`` (None: no deadline)."""
    value = request.headers.get("connect-timeout-ms")
    if value is None or not value.isdigit() or int(value) == 0:
        return None
    return int(value) / 1000


async def unary(request: Request, handler: Callable[[Message], Awaitable[Message]]) -> Response:
    """Answer a unary call: its JSON body in, the handler's dict out, errors with their status."""
    try:
        message = _decode(await request.body())
        result = await asyncio.wait_for(handler(message), timeout_s(request))
    except TimeoutError:
        result_error = ConnectError("deadline_exceeded", "the call's deadline passed")
        return JSONResponse(_error_body(result_error), status_code=504)
    except Exception as exc:
        error = connect_error(exc)
        return JSONResponse(_error_body(error), status_code=HTTP_STATUS.get(error.code, 500))
    return JSONResponse(result)


async def first_message(request: Request) -> Message:
    """The one request message of a server-streaming call."""
    async for message in read_envelopes(request):
        return message
    raise ConnectError("invalid_argument", "the stream carried no request message")


def _end_only(exc: BaseException) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield envelope({"error": _error_body(connect_error(exc))}, _END_STREAM)

    return StreamingResponse(body(), media_type=STREAM_TYPE)


def streaming(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A streaming endpoint whose errors before the stream starts still end it the Connect way."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return _end_only(exc)

    return endpoint


def _keepalive_s(request: Request) -> float | None:
    value = request.headers.get("keepalive-ping-interval", "")
    return float(value) if value.isdigit() and int(value) > 0 else None


def server_stream(
    run: Callable[[Emit], Awaitable[None]],
    request: Request,
    *,
    keepalive: Message | None = None,
) -> StreamingResponse:
    """Stream what ``run`` emits as envelopes, then the end-of-stream envelope (with its error).

    A bounded queue between the call and the response keeps a slow client from
    filling the daemon's memory; a client that goes away cancels the call. When
    the client asks for keepalive pings (E2B's ``Keepalive-Ping-Interval``) an
    idle stream sends ``keepalive`` so that idle-read limits do not cut it.
    """
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(64)
    deadline_s, interval_s = timeout_s(request), _keepalive_s(request)

    async def emit(message: Message) -> None:
        await queue.put(envelope(message))

    async def work() -> None:
        end: Message = {}
        try:
            await asyncio.wait_for(run(emit), deadline_s)
        except TimeoutError:
            end = {"error": _error_body(ConnectError("deadline_exceeded", "the call's deadline passed"))}
        except Exception as exc:
            end = {"error": _error_body(connect_error(exc))}
        await queue.put(envelope(end, _END_STREAM))
        await queue.put(None)

    async def body() -> AsyncIterator[bytes]:
        task = asyncio.create_task(work())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), interval_s)
                except TimeoutError:
                    if keepalive is not None:
                        yield envelope(keepalive)
                    continue
                if item is None:
                    break
                yield item
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return StreamingResponse(body(), media_type=STREAM_TYPE, headers={"X-Accel-Buffering": "no"})


async def client_stream(request: Request, run: Callable[[], Awaitable[Message]]) -> Response:
    """Answer a client-streaming call: ``run`` consumes the request envelopes and returns the reply."""
    try:
        reply = envelope(await asyncio.wait_for(run(), timeout_s(request))) + envelope({}, _END_STREAM)
    except TimeoutError:
        deadline = ConnectError("deadline_exceeded", "the call's deadline passed")
        reply = envelope({"error": _error_body(deadline)}, _END_STREAM)
    except Exception as exc:
        reply = envelope({"error": _error_body(connect_error(exc))}, _END_STREAM)
    return Response(reply, media_type=STREAM_TYPE)


def unary_routes(
    prefix: str,
    handlers: dict[str, Callable[[T, Message], Awaitable[Message]]],
    target: Callable[[Request], T],
) -> list[Route]:
    """One route per unary method: ``handler(target(request), message)``."""

    def endpoint(
        handler: Callable[[T, Message], Awaitable[Message]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            return await unary(request, lambda message: handler(target(request), message))

        return call

    return [Route(prefix + name, endpoint(handler), methods=["POST"]) for name, handler in handlers.items()]


async def unimplemented(request: Request) -> Response:
    """Any method or path Ember's envd does not serve: Connect's ``unimplemented``, not a bare 404."""
    message = f"{request.method} {request.url.path} is not supported by Ember"
    return JSONResponse(
        {"code": "unimplemented", "message": message}, status_code=HTTP_STATUS["unimplemented"]
    )
