"""What the OpenAPI spec says beyond the models: each route's errors, and the media types it streams.

A route names the error classes it can raise (``responses=errors(...)``); the
spec then documents, for each status, the one error body (``Error``: ``code``,
an ``ErrorCode``, and ``message``) and, as ``x-error-codes``, the codes that
route answers with at that status. Streams are documented as what they are:
``application/x-ndjson`` (one JSON object a line) for ``?stream=true`` and
``application/octet-stream`` for file bodies. Validation errors are ``400
invalid_request`` here, so FastAPI's own 422 entries leave the spec.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ember import errors
from ember.server import models

Responses = dict[int | str, dict[str, Any]]

#: Any route behind an API key.
AUTH = (errors.AuthenticationError,)
#: Any route with parameters or a body to check.
INPUT = (errors.InvalidRequestError,)
#: A route with a JSON body (the daemon's body limit).
BODY = (errors.InvalidRequestError, errors.PayloadTooLargeError)
#: Routes for admin keys only.
ADMIN = (errors.PermissionDeniedError,)
#: One of the caller's running sandboxes, by id, in the path.
SANDBOX = (errors.SandboxNotFoundError,)
#: A call to a running sandbox's guest agent.
GUEST = (
    errors.SandboxNotFoundError,
    errors.SandboxNotRunningError,
    errors.SandboxDeadError,
    errors.AgentUnavailableError,
    errors.ProtocolError,
    errors.ExecTimeoutError,
)
#: Importing an OCI image (from a registry, or a layout or archive on the daemon's host).
IMAGE = (
    errors.ImageInvalidError,
    errors.ImageUnsupportedError,
    errors.ImageDigestMismatchError,
    errors.ImageUnsafePathError,
    errors.ImageTooLargeError,
    errors.ImageNotFoundError,
    errors.RegistryUnauthorizedError,
    errors.RegistryError,
    errors.TemplateBuildFailedError,
)
#: What reading a path in the guest can meet.
FILES = (
    errors.PathNotFoundError,
    errors.NotADirectoryError,
    errors.IsADirectoryError,
    errors.PermissionDeniedError,
    errors.IOError,
)
#: What changing the guest's files can meet, besides that.
WRITES = (*FILES, errors.AlreadyExistsError, errors.DirectoryNotEmptyError, errors.DiskFullError)
#: Starting a VM (a boot or a restore), within the key's quota.
LAUNCH = (
    errors.QuotaExceededError,
    errors.ResourceExhaustedError,
    errors.SnapshotIncompatibleError,
    errors.BootFailedError,
    errors.ImagesMissingError,
    errors.IsolationUnavailableError,
    errors.NetworkError,
    errors.VmmError,
)
#: Freezing a VM into a snapshot, within the key's quota and the host's disk reserve.
SNAPSHOT = (
    errors.QuotaExceededError,
    errors.ResourceExhaustedError,
    errors.SandboxNotFoundError,
    errors.SandboxNotRunningError,
    errors.SandboxDeadError,
    errors.DiskFullError,
    errors.IOError,
    errors.VmmError,
)

_BINARY = {"type": "string", "format": "binary"}
#: The pydantic models that NDJSON streams name, added to the spec's components.
_LINE_MODELS: dict[str, type[BaseModel]] = {}


def errors_of(
    *raised: type[errors.EmberError] | Iterable[type[errors.EmberError]],
    body: type[BaseModel] = models.ErrorBody,
    with_codes: bool = True,
) -> Responses:
    """``responses=`` for a route that can raise these errors (classes or groups of them), by status.

    ``body`` is the error body's model; ``with_codes`` lists each status's codes as
    ``x-error-codes`` (E2B's bodies carry the status instead of a code).
    """
    codes: dict[int, set[str]] = {}
    for item in raised:
        for cls in (item,) if isinstance(item, type) else item:
            codes.setdefault(cls.status, set()).add(cls.code)
    responses: Responses = {}
    for status, found in sorted(codes.items()):
        ordered = sorted(found)
        entry: dict[str, Any] = {"model": body, "description": ", ".join(ordered)}
        if with_codes:
            entry["x-error-codes"] = ordered
        responses[status] = entry
    return responses


def ndjson(*lines: type[BaseModel], status: int = 200) -> Responses:
    """The ``?stream=true`` form of a route's answer: NDJSON, each line one of ``lines``."""
    for line in lines:
        _LINE_MODELS[line.__name__] = line
    refs = [{"$ref": f"#/components/schemas/{line.__name__}"} for line in lines]
    schema = {"oneOf": refs} if len(refs) > 1 else refs[0]
    return {status: {"content": {"application/x-ndjson": {"schema": schema}}}}


def binary_response(status: int = 200) -> Responses:
    return {
        status: {"content": {"application/octet-stream": {"schema": _BINARY}}, "description": "the bytes"}
    }


#: ``openapi_extra=`` of a route whose request body is raw bytes (read as a stream, not parsed).
BINARY_BODY = {
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": _BINARY}}}
}


def install(app: FastAPI, *, drop_validation_422: bool = True) -> None:
    """Finish ``app``'s spec once, when it is first asked for: stream line models in, FastAPI's 422s out."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _finish(generate(), drop_validation_422)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(document: dict[str, Any], drop_validation_422: bool) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    text = json.dumps(document)
    named = [model for name, model in _LINE_MODELS.items() if f'"#/components/schemas/{name}"' in text]
    if named:
        _, extra = models_json_schema(
            [(model, "serialization") for model in named], ref_template="#/components/schemas/{model}"
        )
        for name, schema in extra.get("$defs", {}).items():
            schemas.setdefault(name, schema)
    if not drop_validation_422:
        return
    for path in document.get("paths", {}).values():
        for operation in path.values():
            answer = operation.get("responses", {}).get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
