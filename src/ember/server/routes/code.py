"""Running code in a sandbox's REPL contexts: JSON or NDJSON stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.server.deps import sandbox
from ember.server.models import (
    Context,
    ContextList,
    CreateContext,
    ErrorLine,
    Execution,
    ExecutionLine,
    OutputLine,
    RunCode,
    wire,
)
from ember.server.openapi import AUTH, BODY, GUEST, INPUT, errors_of, ndjson
from ember.server.streaming import Emit, ndjson_response

router = APIRouter(tags=["code"])
_RUN = errors_of(AUTH, BODY, GUEST, errors.ContextNotFoundError, errors.PythonUnavailableError) | ndjson(
    OutputLine, ExecutionLine, ErrorLine
)
_CONTEXT = errors_of(AUTH, INPUT, GUEST, errors.ContextNotFoundError)


async def _run(box: Sandbox, body: RunCode, stream: bool) -> Any:
    arguments = {
        "language": body.language,
        "context_id": body.context_id,
        "timeout_s": body.timeout,
        "env": body.env,
    }
    if not stream:
        return Execution.of(await box.code.run(body.code, **arguments))

    async def run(emit: Emit) -> dict[str, Any]:
        execution = await box.code.run(
            body.code,
            on_stdout=lambda text: emit({"type": "stdout", "text": text}),
            on_stderr=lambda text: emit({"type": "stderr", "text": text}),
            **arguments,
        )
        execution.stdout = execution.stderr = ""  # already streamed
        return {"type": "result", "execution": Execution.of(execution).model_dump()}

    return ndjson_response(run)


@router.post("/v1/sandboxes/{sandbox_id}/code", response_model=Execution, responses=_RUN)
async def run_code(body: RunCode, stream: bool = False, box: Sandbox = Depends(sandbox)) -> Any:
    return await _run(box, body, stream)


@router.post("/v1/sandboxes/{sandbox_id}/execute", response_model=Execution, responses=_RUN)
async def execute(body: RunCode, stream: bool = False, box: Sandbox = Depends(sandbox)) -> Any:
    return await _run(box, body, stream)


@router.post(
    "/v1/sandboxes/{sandbox_id}/contexts",
    status_code=201,
    response_model=Context,
    responses=errors_of(AUTH, BODY, GUEST, errors.NotADirectoryError, errors.PythonUnavailableError),
)
async def create_context(body: CreateContext, box: Sandbox = Depends(sandbox)) -> Context:
    return Context(**wire(await box.code.create_context(body.language, body.cwd)))


@router.get(
    "/v1/sandboxes/{sandbox_id}/contexts", response_model=ContextList, responses=errors_of(AUTH, GUEST)
)
async def list_contexts(box: Sandbox = Depends(sandbox)) -> ContextList:
    return ContextList(contexts=[Context(**wire(c)) for c in await box.code.list_contexts()])


@router.delete("/v1/sandboxes/{sandbox_id}/contexts/{context_id}", status_code=204, responses=_CONTEXT)
async def delete_context(context_id: str, box: Sandbox = Depends(sandbox)) -> Response:
    await box.code.delete_context(context_id)
    return Response(status_code=204)


@router.post(
    "/v1/sandboxes/{sandbox_id}/contexts/{context_id}/restart", response_model=Context, responses=_CONTEXT
)
async def restart_context(context_id: str, box: Sandbox = Depends(sandbox)) -> Context:
    return Context(**wire(await box.code.restart_context(context_id)))
