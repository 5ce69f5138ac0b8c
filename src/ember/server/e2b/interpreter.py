"""E2B's code interpreter (port 49999): ``/execute`` as NDJSON and ``/contexts``, on Ember's REPL contexts."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember import errors
from ember.protocol import messages as m
from ember.server.e2b.plane import sandbox_of, working_directory
from ember.server.streaming import Emit, ndjson_response

#: MIME types of a displayed value and the field E2B's ``Result`` has for each.
RESULT_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}
LANGUAGES = ("python", "bash")


def result_line(result: m.RichResult) -> dict[str, Any]:
    line: dict[str, Any] = {"type": "result", "is_main_result": result.is_main_result}
    extra = {}
    for mime, value in result.data.items():
        field = RESULT_FIELDS.get(mime)
        if field == "json" and isinstance(value, str):
            value = json.loads(value)
        if field is None:
            extra[mime] = value
        else:
            line[field] = value
    if extra:
        line["extra"] = extra
    return line


def _plain_errors(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Ember errors as the interpreter's plain-text error responses (404 becomes NotFoundException)."""

    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except errors.EmberError as exc:
            return Response(exc.message, status_code=exc.status, media_type="text/plain")

    return answer


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise errors.InvalidRequestError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequestError("the body is not a JSON object")
    return body


def _language(value: Any) -> str:
    language = value or "python"
    if language not in LANGUAGES:
        raise errors.InvalidRequestError(
            f"language {language!r} is not supported (only {', '.join(LANGUAGES)})"
        )
    return language  # type: ignore[no-any-return]


@_plain_errors
async def execute(request: Request) -> Response:
    box = sandbox_of(request)
    body = await _body(request)
    if not isinstance(body.get("code"), str):
        raise errors.InvalidRequestError("code is required")
    context_id = body.get("context_id") or None
    language = "python" if context_id else _language(body.get("language"))
    env = body.get("env_vars") or None

    async def run(emit: Emit) -> dict[str, Any]:
        async def output(kind: str, text: str) -> None:
            await emit({"type": kind, "text": text, "timestamp": time.time_ns() // 1000})

        try:
            execution = await box.code.run(
                body["code"],
                language=language,
                context_id=context_id,
                env=env,
                on_stdout=lambda text: output("stdout", text),
                on_stderr=lambda text: output("stderr", text),
            )
        except errors.EmberError as exc:  # as a cell error: the SDK's stream has no other error line
            return {"type": "error", "name": type(exc).__name__, "value": exc.message, "traceback": ""}
        for result in execution.results:
            await emit(result_line(result))
        if execution.error is not None:
            error = execution.error
            await emit(
                {"type": "error", "name": error.name, "value": error.value, "traceback": error.traceback}
            )
        return {"type": "number_of_executions", "execution_count": execution.execution_count}

    return ndjson_response(run)


def _context(info: m.ContextInfo) -> dict[str, Any]:
    return {"id": info.context_id, "language": info.language, "cwd": info.cwd}


@_plain_errors
async def create_context(request: Request) -> Response:
    body = await _body(request)
    cwd = working_directory(body.get("cwd"), None)
    info = await sandbox_of(request).code.create_context(_language(body.get("language")), cwd)
    return JSONResponse(_context(info))


@_plain_errors
async def list_contexts(request: Request) -> Response:
    return JSONResponse([_context(c) for c in await sandbox_of(request).code.list_contexts()])


@_plain_errors
async def delete_context(request: Request) -> Response:
    await sandbox_of(request).code.delete_context(request.path_params["context_id"])
    return Response(status_code=204)


@_plain_errors
async def restart_context(request: Request) -> Response:
    await sandbox_of(request).code.restart_context(request.path_params["context_id"])
    return Response(status_code=204)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


routes = [
    Route("/execute", execute, methods=["POST"]),
    Route("/contexts", create_context, methods=["POST"]),
    Route("/contexts", list_contexts, methods=["GET"]),
    Route("/contexts/{context_id}", delete_context, methods=["DELETE"]),
    Route("/contexts/{context_id}/restart", restart_context, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
]
