"""E2B's control plane (the REST API its SDKs' generated client calls), on Ember's engine.

Authentication is an Ember API key in ``X-API-KEY``. Templates ``base`` and
``code-interpreter-v1`` are Ember's default sandbox (template ``base`` when it is
built, a fresh boot otherwise); any other template id is an Ember template name
or one of the caller's snapshot ids. Pause, resume and ``autoPause`` (pause
instead of ending at the timeout) are the engine's: a snapshot tagged with the
sandbox's id, restored under the same id. Errors leave as ``{"code": status, "message"}``, the
body the SDKs turn into their exceptions.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator
from starlette.routing import Match

from ember import errors
from ember.engine.pauses import PAUSED_KEY
from ember.engine.store import SandboxRecord, SnapshotRecord
from ember.protocol.egress import split_rules
from ember.server import failures
from ember.server.deps import Service, ember_version
from ember.server.e2b import schemas
from ember.server.e2b.plane import ENVD_VERSION, AccessTokens
from ember.server.keys import ApiKey
from ember.server.models import unicode_text
from ember.server.openapi import AUTH, BODY, GUEST, INPUT, LAUNCH, SANDBOX, SNAPSHOT, errors_of
from ember.server.openapi import install as install_spec

log = logging.getLogger("ember.server.e2b")
#: E2B's name for every IPv4 destination (``e2b.sandbox.network.ALL_TRAFFIC``).
ALL_TRAFFIC = "0.0.0.0/0"

#: E2B template ids that mean Ember's default sandbox.
DEFAULT_TEMPLATES = ("base", "code-interpreter-v1")
DEFAULT_TIMEOUT_S = 300
CLIENT_ID = "ember"
SNAPSHOT_NAME_KEY = "e2b.name"
#: Where the control app serves its own OpenAPI spec (E2B's models, E2B's error body).
SPEC_PATH = "/e2b/openapi.json"
_FOREVER = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)


class _Body(BaseModel):
    # E2B adds request fields over time: unknown ones are ignored, known ones checked.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        return unicode_text(data)


class NetworkConfig(_Body):
    """E2B's egress rules, mapped onto an Ember network policy (``policy``)."""

    allow_out: list[str] | None = Field(None, alias="allowOut")
    deny_out: list[str] | None = Field(None, alias="denyOut")
    allow_public_traffic: StrictBool | None = Field(None, alias="allowPublicTraffic")

    @field_validator("allow_out", "deny_out")
    @classmethod
    def _targets(cls, value: list[str] | None) -> list[str] | None:
        for target in value or []:
            try:
                ipaddress.ip_network(target, strict=False)
            except ValueError:
                if not target or any(c.isspace() or c == "/" for c in target):
                    raise ValueError(
                        f"{target!r} is neither a CIDR range, an address nor a host name"
                    ) from None
        return value

    def policy(self, internet: bool | None = None) -> dict[str, Any] | str:
        """The Ember policy: all outbound traffic unless ``denyOut`` (or no internet access) says no.

        ``allowOut`` goes before ``denyOut``, as on E2B. Ember can deny everything
        but ``allowOut`` (an allowlist), or nothing: a ``denyOut`` of some ranges
        only is refused rather than half applied.
        """
        denied = list(self.deny_out or [])
        if internet is False:
            denied.append(ALL_TRAFFIC)
        if not denied:
            return "full"
        if ALL_TRAFFIC not in denied:
            raise errors.InvalidRequestError(
                "Ember applies denyOut as all traffic (0.0.0.0/0) with allowOut as the exceptions; "
                f"a denyOut of {', '.join(denied)} alone is not supported"
            )
        rules = [_cidr(rule) for rule in self.allow_out or []]
        return {"mode": "allowlist", **split_rules(rules)}


def _cidr(rule: str) -> str:
    """An address becomes its /32; ranges and host names stay as they are."""
    try:
        return str(ipaddress.ip_network(rule, strict=False))
    except ValueError:
        return rule


class NewSandbox(_Body):
    template_id: str = Field("base", alias="templateID", min_length=1)
    timeout: StrictInt = Field(DEFAULT_TIMEOUT_S, ge=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, alias="envVars")
    auto_pause: StrictBool = Field(False, alias="autoPause")
    allow_internet_access: StrictBool | None = Field(None, alias="allowInternetAccess")
    network: NetworkConfig | None = None


class TimeoutBody(_Body):
    timeout: StrictInt = Field(ge=1)


class ConnectBody(_Body):
    timeout: StrictInt = Field(DEFAULT_TIMEOUT_S, ge=1)


class ForkBody(_Body):
    timeout: StrictInt | None = Field(None, ge=1)
    count: StrictInt = Field(1, ge=1)


class SnapshotBody(_Body):
    name: str | None = None


class E2bFace:
    """Resolves E2B's notions (templates, paused sandboxes, tokens) onto the engine for one request."""

    def __init__(self, service: Service, tokens: AccessTokens, key: ApiKey) -> None:
        self.manager = service.manager
        self.domain = service.manager.settings.e2b_domain
        self.tokens = tokens
        self.key = key

    def created(self, record: SandboxRecord, template_id: str) -> dict[str, Any]:
        token = self.tokens.token(record.id)
        return {
            "templateID": template_id,
            "sandboxID": record.id,
            "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": token,
            "trafficAccessToken": token,
            # The SDK's get_host(port) builds {port}-{id}.{domain}: Ember's E2B domain when it has one.
            "domain": self.domain,
        }

    def paused(self, sandbox_id: str) -> SnapshotRecord | None:
        return self.manager.paused_snapshot(sandbox_id, owner=self.key.id)

    def running(self, sandbox_id: str) -> SandboxRecord | None:
        try:
            return self.manager.get(sandbox_id, owner=self.key.id).record
        except errors.SandboxNotFoundError:
            return None

    async def create(self, body: NewSandbox) -> SandboxRecord:
        options: dict[str, Any] = {
            "env": body.env_vars,
            "metadata": body.metadata,
            "timeout_s": body.timeout,
            "owner": self.key.id,
            "on_timeout": "pause" if body.auto_pause else "kill",
            "network": (body.network or NetworkConfig()).policy(body.allow_internet_access),
        }
        template = body.template_id
        if template in DEFAULT_TEMPLATES:
            sandbox = await self.manager.create(**options)
        elif self.manager.store.snapshot_named(template) is not None:
            sandbox = await self.manager.create(template=template, **options)
        else:
            sandbox = await self.manager.create(snapshot=template, **options)
        return sandbox.record

    async def pause(self, sandbox_id: str) -> None:
        if self.running(sandbox_id) is None and self.paused(sandbox_id) is not None:
            raise errors.ConflictError(f"sandbox {sandbox_id} is already paused")
        await self.manager.pause(sandbox_id, owner=self.key.id)

    async def resume(self, sandbox_id: str, timeout_s: int) -> SandboxRecord:
        return (await self.manager.resume(sandbox_id, owner=self.key.id, timeout_s=timeout_s)).record

    def listed(self, record: SandboxRecord) -> dict[str, Any]:
        ends = _time(record.expires_at) if record.expires_at is not None else _FOREVER
        return {
            "templateID": record.template or "base",
            "sandboxID": record.id,
            "clientID": CLIENT_ID,
            "startedAt": _time(record.created_at).isoformat(),
            "endAt": ends.isoformat(),
            "cpuCount": record.vcpus,
            "memoryMB": record.memory_mib,
            "diskSizeMB": record.disk_mib,
            "state": "running",
            "envdVersion": ENVD_VERSION,
            "metadata": record.metadata,
        }

    def listed_paused(self, snapshot: SnapshotRecord) -> dict[str, Any]:
        return {
            "templateID": "base",
            "sandboxID": snapshot.metadata[PAUSED_KEY],
            "clientID": CLIENT_ID,
            "startedAt": _time(snapshot.created_at).isoformat(),
            "endAt": _FOREVER.isoformat(),
            "cpuCount": snapshot.vcpus,
            "memoryMB": snapshot.memory_mib,
            "diskSizeMB": snapshot.disk_mib,
            "state": "paused",
            "envdVersion": ENVD_VERSION,
            "metadata": {k: v for k, v in snapshot.metadata.items() if k != PAUSED_KEY},
        }


def _time(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _face(request: Request) -> E2bFace:
    app = request.app
    key = app.state.service.keys.verify(request.headers.get("x-api-key"))
    return E2bFace(app.state.service, app.state.tokens, key)


Face = Annotated[E2bFace, Depends(_face)]
router = APIRouter(dependencies=[Security(APIKeyHeader(name="X-API-KEY", auto_error=False))])


def _errors(*raised: type[errors.EmberError] | tuple[type[errors.EmberError], ...]) -> dict[int | str, Any]:
    """``responses=`` with E2B's error body, whose code is the status."""
    return errors_of(*raised, body=schemas.Error, with_codes=False)


#: Answers with E2B's models, leaving out what a route's dict does not set (as before the models).
_SANDBOX: dict[str, Any] = {"response_model": schemas.Sandbox, "response_model_exclude_unset": True}
_CREATE = _errors(AUTH, BODY, LAUNCH, errors.SnapshotNotFoundError, errors.TemplateNotFoundError)
_RESUME = _errors(AUTH, BODY, LAUNCH, errors.SandboxNotFoundError, errors.ConflictError)


@router.post("/sandboxes", status_code=201, responses=_CREATE, **_SANDBOX)
@router.post("/v2/sandboxes", status_code=201, responses=_CREATE, **_SANDBOX)
async def create_sandbox(body: NewSandbox, face: Face) -> dict[str, Any]:
    return face.created(await face.create(body), body.template_id)


def _matches(metadata: dict[str, str], query: str | None) -> bool:
    wanted = dict(parse_qsl(query or "", keep_blank_values=True))
    return all(metadata.get(k) == v for k, v in wanted.items())


_LISTED: dict[str, Any] = {
    "response_model": list[schemas.ListedSandbox],
    "response_model_exclude_unset": True,
    "responses": _errors(AUTH, INPUT),
}


@router.get("/sandboxes", **_LISTED)
@router.get("/v2/sandboxes", **_LISTED)
def list_sandboxes(
    face: Face,
    metadata: str | None = None,
    state: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> list[dict[str, Any]]:
    states = set((state or "running,paused").split(","))
    if not states <= {"running", "paused"}:
        raise errors.InvalidRequestError("state is a comma-separated list of running and paused")
    found = []
    if "running" in states:
        found += [face.listed(r) for r in face.manager.records(owner=face.key.id) if r.state == "running"]
    if "paused" in states:
        found += [face.listed_paused(s) for s in face.manager.paused(owner=face.key.id)]
    found = [s for s in found if _matches(s["metadata"], metadata)]
    return found[:limit] if limit else found


@router.get(
    "/sandboxes/{sandbox_id}",
    response_model=schemas.SandboxDetail,
    response_model_exclude_unset=True,
    responses=_errors(AUTH, SANDBOX),
)
def get_sandbox(sandbox_id: str, face: Face) -> dict[str, Any]:
    record = face.running(sandbox_id)
    if record is not None:
        token = face.tokens.token(sandbox_id)
        return face.listed(record) | {"envdAccessToken": token, "domain": face.domain}
    snapshot = face.paused(sandbox_id)
    if snapshot is None:
        raise errors.SandboxNotFoundError(f"sandbox {sandbox_id} not found")
    return face.listed_paused(snapshot)


@router.delete(
    "/sandboxes/{sandbox_id}", status_code=204, responses=_errors(AUTH, SANDBOX, errors.SnapshotNotFoundError)
)
async def kill_sandbox(sandbox_id: str, face: Face) -> Response:
    if face.running(sandbox_id) is not None:
        await face.manager.destroy(sandbox_id, "killed", owner=face.key.id)
    elif (snapshot := face.paused(sandbox_id)) is not None:
        await face.manager.delete_snapshot(snapshot.id, owner=face.key.id)
    else:
        raise errors.SandboxNotFoundError(f"sandbox {sandbox_id} not found")
    return Response(status_code=204)


@router.post(
    "/sandboxes/{sandbox_id}/timeout",
    status_code=204,
    responses=_errors(AUTH, BODY, SANDBOX, errors.QuotaExceededError),
)
def set_timeout(sandbox_id: str, body: TimeoutBody, face: Face) -> Response:
    face.manager.set_timeout(sandbox_id, body.timeout, owner=face.key.id)
    return Response(status_code=204)


_CONNECT = {201: {"model": schemas.Sandbox, "description": "a paused sandbox, resumed"}} | _RESUME


@router.post("/sandboxes/{sandbox_id}/connect", responses=_CONNECT, **_SANDBOX)
@router.post("/v2/sandboxes/{sandbox_id}/connect", responses=_CONNECT, **_SANDBOX)
async def connect_sandbox(sandbox_id: str, body: ConnectBody, face: Face) -> JSONResponse:
    """Connect to a running sandbox (its timeout becomes at least ``timeout``), or resume a paused one."""
    record = face.running(sandbox_id)
    if record is not None:
        expires = record.expires_at
        if expires is not None and expires - datetime.datetime.now(datetime.UTC).timestamp() < body.timeout:
            face.manager.set_timeout(sandbox_id, body.timeout, owner=face.key.id)
        return JSONResponse(face.created(record, record.template or "base"), status_code=200)
    record = await face.resume(sandbox_id, body.timeout)
    return JSONResponse(face.created(record, record.template or "base"), status_code=201)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201, responses=_RESUME, **_SANDBOX)
async def resume_sandbox(sandbox_id: str, body: ConnectBody, face: Face) -> dict[str, Any]:
    if face.running(sandbox_id) is not None:
        raise errors.ConflictError(f"sandbox {sandbox_id} is already running")
    record = await face.resume(sandbox_id, body.timeout)
    return face.created(record, record.template or "base")


@router.post(
    "/sandboxes/{sandbox_id}/pause", status_code=204, responses=_errors(AUTH, SNAPSHOT, errors.ConflictError)
)
async def pause_sandbox(sandbox_id: str, face: Face) -> Response:
    await face.pause(sandbox_id)
    return Response(status_code=204)


@router.post(
    "/sandboxes/{sandbox_id}/fork",
    status_code=201,
    response_model=list[schemas.ForkedSandbox],
    response_model_exclude_unset=True,
    responses=_errors(AUTH, BODY, SNAPSHOT, LAUNCH),
)
async def fork_sandbox(sandbox_id: str, body: ForkBody, face: Face) -> list[dict[str, Any]]:
    forks = await face.manager.fork(sandbox_id, body.count, owner=face.key.id)
    if body.timeout is not None:
        for fork in forks:
            face.manager.set_timeout(fork.id, body.timeout, owner=face.key.id)
    return [{"sandbox": face.created(f.record, f.record.template or "base")} for f in forks]


@router.post(
    "/sandboxes/{sandbox_id}/snapshots",
    status_code=201,
    response_model=schemas.SnapshotInfo,
    responses=_errors(AUTH, BODY, SNAPSHOT),
)
async def snapshot_sandbox(sandbox_id: str, body: SnapshotBody, face: Face) -> dict[str, Any]:
    """A snapshot to start sandboxes from (``Sandbox.create(snapshot_id)``)."""
    metadata = {SNAPSHOT_NAME_KEY: body.name} if body.name else {}
    return _snapshot_info(await face.manager.snapshot(sandbox_id, owner=face.key.id, metadata=metadata))


def _snapshot_info(snapshot: SnapshotRecord) -> dict[str, Any]:
    name = snapshot.metadata.get(SNAPSHOT_NAME_KEY)
    return {"snapshotID": snapshot.id, "names": [name] if name else []}


@router.get("/snapshots", response_model=list[schemas.SnapshotInfo], responses=_errors(AUTH))
def list_snapshots(
    face: Face, sandbox_id: Annotated[str | None, Query(alias="sandboxID")] = None, name: str | None = None
) -> list[dict[str, Any]]:
    """The key's snapshots (pause snapshots are sandboxes, not listed here)."""
    found = [
        s
        for s in face.manager.list_snapshots(owner=face.key.id)
        if PAUSED_KEY not in s.metadata
        and (sandbox_id is None or s.source_sandbox == sandbox_id)
        and (name is None or s.metadata.get(SNAPSHOT_NAME_KEY) == name)
    ]
    return [_snapshot_info(s) for s in found]


@router.delete(
    "/templates/{snapshot_id}", status_code=204, responses=_errors(AUTH, errors.SnapshotNotFoundError)
)
async def delete_snapshot(snapshot_id: str, face: Face) -> Response:
    """E2B deletes a snapshot as the template it is; Ember's own templates are not deleted here."""
    await face.manager.delete_snapshot(snapshot_id, owner=face.key.id)
    return Response(status_code=204)


@router.put(
    "/sandboxes/{sandbox_id}/network",
    status_code=204,
    responses=_errors(AUTH, BODY, GUEST, errors.NetworkError),
)
async def update_network(sandbox_id: str, body: NetworkConfig, face: Face) -> Response:
    if face.running(sandbox_id) is None:
        raise errors.SandboxNotFoundError(f"sandbox {sandbox_id} not found")
    await face.manager.set_network(sandbox_id, body.policy(), owner=face.key.id)
    return Response(status_code=204)


def create_control_app(service: Service, tokens: AccessTokens) -> FastAPI:
    """E2B's control plane as its own small app, so that its error bodies are E2B's."""
    app = FastAPI(
        title="Ember's E2B control plane",
        version=ember_version(),
        openapi_url=SPEC_PATH,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service, app.state.tokens = service, tokens

    def render(error: errors.EmberError) -> JSONResponse:
        # E2B's SDKs read every error body as JSON, with the status as its code.
        return JSONResponse({"code": error.status, "message": error.message}, status_code=error.status)

    failures.install(app, render)

    async def not_implemented(request: Request) -> JSONResponse:
        # E2B endpoints Ember does not serve (metrics, logs, volumes, ...): said plainly, not a 404.
        # A path it serves, asked with another method, is the client's mistake: 405.
        allowed = {
            method
            for route in router.routes
            if isinstance(route, APIRoute) and route.matches(request.scope)[0] is Match.PARTIAL
            for method in route.methods
        }
        if allowed:
            taken = ", ".join(sorted(allowed))
            response = render(
                errors.MethodNotAllowedError(f"{request.url.path} takes {taken}, not {request.method}")
            )
            response.headers["Allow"] = taken
            return response
        unserved = f"{request.method} {request.url.path} is not supported by Ember's E2B API"
        return render(errors.HttpError(unserved, status=501))

    app.include_router(router)
    install_spec(app)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app.add_api_route("/{path:path}", not_implemented, methods=methods, include_in_schema=False)
    return app
