"""Snapshots, forks, templates and the warm pool: freeze a sandbox, copy it, name it, keep copies ready."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from ember import errors
from ember.engine import templates
from ember.engine.forks import ForkTiming
from ember.engine.store import SnapshotRecord
from ember.images import BuildProgress
from ember.server.deps import caller, require_admin, service
from ember.server.keys import ApiKey
from ember.server.models import (
    CreateSnapshot,
    ErrorLine,
    Fork,
    ImportTemplate,
    PoolInfo,
    PoolList,
    ProgressLine,
    SandboxInfo,
    SandboxList,
    SaveTemplate,
    SnapshotInfo,
    SnapshotList,
    StageLine,
    TemplateLine,
)
from ember.server.openapi import ADMIN, AUTH, BODY, IMAGE, LAUNCH, SNAPSHOT, errors_of, ndjson
from ember.server.streaming import Emit, ndjson_response, with_progress

router = APIRouter(tags=["snapshots"])


@router.post(
    "/v1/sandboxes/{sandbox_id}/snapshots",
    status_code=201,
    response_model=SnapshotInfo,
    responses=errors_of(AUTH, BODY, SNAPSHOT),
)
async def create_snapshot(
    sandbox_id: str, body: CreateSnapshot, request: Request, key: ApiKey = Depends(caller)
) -> SnapshotInfo:
    """Snapshot a running sandbox (it runs on); start copies with ``POST /v1/sandboxes {"snapshot": id}``."""
    record = await service(request).manager.snapshot(sandbox_id, owner=key.id, metadata=body.metadata)
    return SnapshotInfo.of(record)


@router.post(
    "/v1/sandboxes/{sandbox_id}/fork",
    status_code=201,
    response_model=SandboxList,
    responses=errors_of(AUTH, BODY, SNAPSHOT, LAUNCH),
)
async def fork(
    sandbox_id: str, body: Fork, request: Request, response: Response, key: ApiKey = Depends(caller)
) -> SandboxList:
    """``count`` new running sandboxes identical to this one now; the source runs on.
    ``Server-Timing`` says how long its snapshot took and the daemon's CPU."""
    timing = ForkTiming()
    forks = await service(request).manager.fork(sandbox_id, body.count, owner=key.id, timing=timing)
    response.headers["Server-Timing"] = timing.server_timing()
    return SandboxList(sandboxes=[SandboxInfo.of(f.record) for f in forks])


@router.get("/v1/snapshots", response_model=SnapshotList, responses=errors_of(AUTH))
def list_snapshots(request: Request, key: ApiKey = Depends(caller)) -> SnapshotList:
    records = service(request).manager.list_snapshots(owner=key.id)
    return SnapshotList(snapshots=[SnapshotInfo.of(r) for r in records])


@router.get(
    "/v1/snapshots/{snapshot_id}",
    response_model=SnapshotInfo,
    responses=errors_of(AUTH, errors.SnapshotNotFoundError),
)
def get_snapshot(snapshot_id: str, request: Request, key: ApiKey = Depends(caller)) -> SnapshotInfo:
    return SnapshotInfo.of(service(request).manager.snapshots.get(snapshot_id, owner=key.id))


@router.delete(
    "/v1/snapshots/{snapshot_id}", status_code=204, responses=errors_of(AUTH, errors.SnapshotNotFoundError)
)
async def delete_snapshot(snapshot_id: str, request: Request, key: ApiKey = Depends(caller)) -> Response:
    await service(request).manager.delete_snapshot(snapshot_id, owner=key.id)
    return Response(status_code=204)


@router.post(
    "/v1/sandboxes/{sandbox_id}/template",
    status_code=201,
    response_model=SnapshotInfo,
    responses=errors_of(AUTH, ADMIN, BODY, SNAPSHOT),
)
async def save_template(
    sandbox_id: str, body: SaveTemplate, request: Request, key: ApiKey = Depends(require_admin)
) -> SnapshotInfo:
    """Snapshot the sandbox as a named template that every key can start from (admin keys only)."""
    return SnapshotInfo.of(await service(request).manager.save_template(sandbox_id, body.name, owner=key.id))


@router.post(
    "/v1/templates",
    status_code=201,
    response_model=SnapshotInfo,
    responses=errors_of(AUTH, ADMIN, BODY, IMAGE, LAUNCH, SNAPSHOT)
    | ndjson(StageLine, ProgressLine, TemplateLine, ErrorLine, status=201),
)
async def import_template(
    body: ImportTemplate, request: Request, stream: bool = False, key: ApiKey = Depends(require_admin)
) -> Any:
    """Build a template from an OCI image (admin keys only); ``?stream=true`` streams its progress
    as NDJSON (``stage`` and ``progress`` lines), then the template (``result``) or an error."""
    manager = service(request).manager
    credentials = None
    if body.registry_username is not None:
        credentials = (body.registry_username, body.registry_password or "")

    async def build(progress: BuildProgress | None) -> SnapshotRecord:
        return await templates.import_oci(
            manager, body.name, body.from_oci, vcpus=body.vcpus, memory_mb=body.memory_mb,
            disk_mb=body.disk_mb, credentials=credentials, progress=progress, owner=key.id,
        )  # fmt: skip

    if not stream:
        return SnapshotInfo.of(await build(None))

    async def run(emit: Emit) -> dict[str, Any]:
        record = await with_progress(build, emit)
        return {"type": "result", "template": SnapshotInfo.of(record).model_dump()}

    return ndjson_response(run)


@router.get("/v1/templates", response_model=SnapshotList, responses=errors_of(AUTH))
def list_templates(request: Request, key: ApiKey = Depends(caller)) -> SnapshotList:
    records = service(request).manager.snapshots.list(kind="template")
    return SnapshotList(snapshots=[SnapshotInfo.of(r) for r in records])


@router.delete(
    "/v1/templates/{name}", status_code=204, responses=errors_of(AUTH, ADMIN, errors.TemplateNotFoundError)
)
async def delete_template(name: str, request: Request, key: ApiKey = Depends(require_admin)) -> Response:
    await service(request).manager.delete_template(name)
    return Response(status_code=204)


@router.get("/v1/pool", response_model=PoolList, responses=errors_of(AUTH))
def pool_stats(request: Request, key: ApiKey = Depends(caller)) -> PoolList:
    """Per template: the target and ready counts, hits, misses and refill times of the warm pool."""
    return PoolList(pools=[PoolInfo(**stats) for stats in service(request).manager.pool_stats()])
