"""Sandboxes: create, list, get, delete, set lifetime; and /health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import AfterValidator

from ember import errors
from ember.errors import InvalidRequestError
from ember.server.deps import caller, ember_version, service
from ember.server.keys import ApiKey
from ember.server.models import CreateSandbox, Health, SandboxInfo, SandboxList, SetTimeout, unicode_text
from ember.server.openapi import AUTH, BODY, GUEST, INPUT, LAUNCH, SANDBOX, errors_of

router = APIRouter()


@router.get("/health", response_model=Health, tags=["service"])
def health(request: Request) -> Health:
    manager = service(request).manager
    return Health(
        status="ok",
        version=ember_version(),
        acceleration=manager.acceleration.kind,
        protections=manager.driver.protections(),
    )


@router.post(
    "/v1/sandboxes",
    status_code=201,
    response_model=SandboxInfo,
    tags=["sandboxes"],
    responses=errors_of(AUTH, BODY, LAUNCH, errors.TemplateNotFoundError, errors.SnapshotNotFoundError),
)
async def create_sandbox(body: CreateSandbox, request: Request, key: ApiKey = Depends(caller)) -> SandboxInfo:
    sandbox = await service(request).manager.create(
        vcpus=body.vcpus,
        memory_mb=body.memory_mb,
        disk_mb=body.disk_mb,
        env=body.env,
        metadata=body.metadata,
        timeout_s=body.timeout,
        idle_timeout_s=body.idle_timeout,
        owner=key.id,
        template=body.template,
        snapshot=body.snapshot,
        network=body.network,
    )
    return SandboxInfo.of(sandbox.record)


def _metadata_filter(pairs: list[str]) -> dict[str, str]:
    wanted = {}
    for pair in pairs:
        name, separator, value = pair.partition(":")
        if not separator or not name:
            raise InvalidRequestError(f"metadata filter {pair!r} must look like key:value")
        wanted[name] = value
    return wanted


@router.get("/v1/sandboxes", response_model=SandboxList, tags=["sandboxes"], responses=errors_of(AUTH, INPUT))
def list_sandboxes(
    request: Request,
    state: Annotated[str, Query(pattern="^(running|all)$")] = "running",
    metadata: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    key: ApiKey = Depends(caller),
) -> SandboxList:
    wanted = _metadata_filter(metadata)
    records = service(request).manager.records(include_ended=state == "all", owner=key.id)
    matching = [r for r in records if all(r.metadata.get(k) == v for k, v in wanted.items())]
    return SandboxList(sandboxes=[SandboxInfo.of(r) for r in matching])


@router.get(
    "/v1/sandboxes/{sandbox_id}",
    response_model=SandboxInfo,
    tags=["sandboxes"],
    responses=errors_of(AUTH, SANDBOX),
)
def get_sandbox(sandbox_id: str, request: Request, key: ApiKey = Depends(caller)) -> SandboxInfo:
    return SandboxInfo.of(service(request).manager.record(sandbox_id, owner=key.id))


@router.delete(
    "/v1/sandboxes/{sandbox_id}", status_code=204, tags=["sandboxes"], responses=errors_of(AUTH, SANDBOX)
)
async def delete_sandbox(sandbox_id: str, request: Request, key: ApiKey = Depends(caller)) -> Response:
    await service(request).manager.destroy(sandbox_id, owner=key.id)
    return Response(status_code=204)


@router.put(
    "/v1/sandboxes/{sandbox_id}/network",
    response_model=SandboxInfo,
    tags=["sandboxes"],
    responses=errors_of(AUTH, BODY, GUEST, errors.NetworkError),
)
async def set_network(
    sandbox_id: str,
    request: Request,
    body: Annotated[str | dict[str, Any], Body(), AfterValidator(unicode_text)],
    key: ApiKey = Depends(caller),
) -> SandboxInfo:
    record = await service(request).manager.set_network(sandbox_id, body, owner=key.id)
    return SandboxInfo.of(record)


@router.post(
    "/v1/sandboxes/{sandbox_id}/timeout",
    response_model=SandboxInfo,
    tags=["sandboxes"],
    responses=errors_of(AUTH, BODY, SANDBOX, errors.QuotaExceededError),
)
def set_timeout(
    sandbox_id: str, body: SetTimeout, request: Request, key: ApiKey = Depends(caller)
) -> SandboxInfo:
    return SandboxInfo.of(service(request).manager.set_timeout(sandbox_id, body.timeout, owner=key.id))
