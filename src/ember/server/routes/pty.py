"""Terminals: create one, then talk to it over a WebSocket (binary bytes, JSON control)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from ember import errors
from ember.engine.sandbox import Sandbox
from ember.errors import EmberError
from ember.server.deps import bearer_token, sandbox, service
from ember.server.models import CreatePty, Started
from ember.server.openapi import AUTH, BODY, GUEST, errors_of

router = APIRouter(tags=["pty"])
log = logging.getLogger("ember.server")


@router.post(
    "/v1/sandboxes/{sandbox_id}/pty",
    status_code=201,
    response_model=Started,
    responses=errors_of(AUTH, BODY, GUEST, errors.ExecFailedError, errors.NotADirectoryError),
)
async def create_pty(body: CreatePty, box: Sandbox = Depends(sandbox)) -> Started:
    pid = await box.pty.create(
        body.cmd, cols=body.cols, rows=body.rows, env=body.env, cwd=body.cwd, user=body.user
    )
    return Started(pid=pid)


@router.websocket("/v1/sandboxes/{sandbox_id}/pty/{pid}")
async def terminal(websocket: WebSocket, sandbox_id: str, pid: int) -> None:
    """Binary frames carry terminal bytes both ways; text frames are JSON control messages."""
    try:
        token = bearer_token(websocket.headers.get("authorization")) or websocket.query_params.get("api_key")
        key = service(websocket).keys.verify(token)  # type: ignore[arg-type]
        box = service(websocket).manager.get(sandbox_id, owner=key.id)  # type: ignore[arg-type]
    except EmberError as exc:
        body = {"code": exc.code, "message": exc.message}
        await websocket.send_denial_response(JSONResponse(body, status_code=exc.status))
        return
    await websocket.accept()

    async def output() -> None:
        result = await box.pty.stream(pid, websocket.send_bytes)
        await websocket.send_text(json.dumps({"type": "exit", "exit_code": result.exit_code}))

    async def keyboard() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes"):
                await box.pty.send(pid, message["bytes"])
            elif message.get("text"):
                await _control(box, pid, message["text"], websocket)

    tasks = [asyncio.create_task(output()), asyncio.create_task(keyboard())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None and not isinstance(task.exception(), WebSocketDisconnect):
                raise task.exception()  # type: ignore[misc]
    except EmberError as exc:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps({"type": "error", "code": exc.code, "message": exc.message}))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _control(box: Sandbox, pid: int, text: str, websocket: WebSocket) -> None:
    try:
        message = json.loads(text)
        if message.get("type") == "resize":
            await box.pty.resize(pid, int(message["cols"]), int(message["rows"]))
        elif message.get("type") == "input":
            await box.pty.send(pid, str(message.get("data", "")).encode())
        else:
            raise ValueError(f"unknown message type {message.get('type')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        error = {"type": "error", "code": "invalid_request", "message": f"bad control message: {exc}"}
        await websocket.send_text(json.dumps(error))
