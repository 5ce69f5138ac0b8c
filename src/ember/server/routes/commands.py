"""Processes in a sandbox: run (JSON or NDJSON), background, list, reattach, stdin, signals."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.errors import InvalidRequestError
from ember.protocol import messages as m
from ember.server.deps import sandbox
from ember.server.models import (
    CommandLine,
    CommandResult,
    ErrorLine,
    OutputLine,
    ProcessInfo,
    ProcessList,
    RunCommand,
    Signal,
    Started,
    StartLine,
    wire,
)
from ember.server.openapi import AUTH, BINARY_BODY, BODY, GUEST, INPUT, errors_of, ndjson
from ember.server.streaming import Emit, ndjson_response

router = APIRouter(tags=["commands"])
_PROCESS = errors_of(AUTH, INPUT, GUEST, errors.ProcessNotFoundError)


def _result_line(result: m.ProcessExit) -> dict[str, Any]:
    result.stdout = result.stderr = ""  # already streamed
    return {"type": "result", "command": CommandResult.of(result).model_dump()}


@router.post(
    "/v1/sandboxes/{sandbox_id}/commands",
    response_model=CommandResult,
    responses={201: {"model": Started, "description": "a background process, started"}}
    | errors_of(AUTH, BODY, GUEST, errors.ExecFailedError, errors.NotADirectoryError)
    | ndjson(StartLine, OutputLine, CommandLine, ErrorLine),
)
async def run_command(body: RunCommand, stream: bool = False, box: Sandbox = Depends(sandbox)) -> Any:
    if (body.cmd is None) == (body.argv is None):
        raise InvalidRequestError("give exactly one of cmd and argv")
    command: str | list[str] = body.cmd if body.cmd is not None else list(body.argv or [])
    options = {
        "env": body.env,
        "cwd": body.cwd,
        "user": body.user,
        "timeout_s": body.timeout,
        "stdin": body.stdin,
    }
    if body.background:
        pid = await box.commands.start(command, tag=body.tag, **options)  # type: ignore[arg-type]
        return JSONResponse(Started(pid=pid).model_dump(), status_code=201)
    if not stream:
        return CommandResult.of(await box.commands.run(command, **options))  # type: ignore[arg-type]

    async def run(emit: Emit) -> dict[str, Any]:
        result = await box.commands.run(
            command,
            on_start=lambda pid: emit({"type": "start", "pid": pid}),
            on_stdout=lambda text: emit({"type": "stdout", "text": text}),
            on_stderr=lambda text: emit({"type": "stderr", "text": text}),
            **options,  # type: ignore[arg-type]
        )
        return _result_line(result)

    return ndjson_response(run)


@router.get(
    "/v1/sandboxes/{sandbox_id}/commands", response_model=ProcessList, responses=errors_of(AUTH, GUEST)
)
async def list_commands(box: Sandbox = Depends(sandbox)) -> ProcessList:
    return ProcessList(processes=[ProcessInfo(**wire(p)) for p in await box.commands.list()])


@router.get(
    "/v1/sandboxes/{sandbox_id}/commands/{pid}",
    response_model=CommandResult,
    responses=_PROCESS | ndjson(OutputLine, CommandLine, ErrorLine),
)
async def attach(pid: int, stream: bool = False, box: Sandbox = Depends(sandbox)) -> Any:
    if not stream:
        return CommandResult.of(await box.commands.attach(pid))

    async def run(emit: Emit) -> dict[str, Any]:
        result = await box.commands.attach(
            pid,
            on_stdout=lambda text: emit({"type": "stdout", "text": text}),
            on_stderr=lambda text: emit({"type": "stderr", "text": text}),
        )
        return _result_line(result)

    return ndjson_response(run)


@router.post(
    "/v1/sandboxes/{sandbox_id}/commands/{pid}/stdin",
    status_code=204,
    responses=errors_of(AUTH, BODY, GUEST, errors.ProcessNotFoundError),
    openapi_extra=BINARY_BODY,
)
async def send_stdin(
    pid: int, request: Request, eof: bool = False, box: Sandbox = Depends(sandbox)
) -> Response:
    await box.commands.send_stdin(pid, await request.body(), eof=eof)
    return Response(status_code=204)


@router.post("/v1/sandboxes/{sandbox_id}/commands/{pid}/signal", status_code=204, responses=_PROCESS)
async def signal(pid: int, body: Signal, box: Sandbox = Depends(sandbox)) -> Response:
    await box.commands.kill(pid, body.signal)
    return Response(status_code=204)
