"""API keys (admin only): create, list, revoke, and their quotas; a key reads its own quota."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ember.engine.quotas import Quota
from ember.errors import KeyNotFoundError
from ember.server.deps import Service, caller, require_admin, service
from ember.server.keys import ApiKey
from ember.server.models import CreateKey, KeyInfo, KeyList, NewKey, QuotaInfo, QuotaLimits, QuotaUsage
from ember.server.openapi import ADMIN, AUTH, BODY, INPUT, errors_of

router = APIRouter(tags=["keys"])


def _info(key: ApiKey) -> dict[str, object]:
    return {"id": key.id, "name": key.name, "admin": key.admin, "created_at": key.created_at,
            "revoked_at": key.revoked_at}  # fmt: skip


@router.post("/v1/keys", status_code=201, response_model=NewKey, responses=errors_of(AUTH, ADMIN, BODY))
def create_key(body: CreateKey, request: Request, admin: ApiKey = Depends(require_admin)) -> NewKey:
    key, secret = service(request).keys.create(body.name, admin=body.admin)
    return NewKey(key=secret, **_info(key))  # type: ignore[arg-type]


@router.get("/v1/keys", response_model=KeyList, responses=errors_of(AUTH, ADMIN))
def list_keys(request: Request, admin: ApiKey = Depends(require_admin)) -> KeyList:
    return KeyList(keys=[KeyInfo(**_info(k)) for k in service(request).keys.list()])  # type: ignore[arg-type]


@router.delete("/v1/keys/{key_id}", status_code=204, responses=errors_of(AUTH, ADMIN, KeyNotFoundError))
def revoke_key(key_id: str, request: Request, admin: ApiKey = Depends(require_admin)) -> Response:
    service(request).keys.revoke(key_id)
    return Response(status_code=204)


def _quota(service_: Service, key_id: str) -> QuotaInfo:
    own = service_.keys.own_quota(key_id)
    default = service_.keys.default_quota()
    return QuotaInfo(
        key_id=key_id,
        own=own,
        default=default.to_dict(),
        limits=default.under(own).to_dict(),
        usage=QuotaUsage(**service_.manager.quotas.usage(key_id).to_dict()),
    )


_KEY_QUOTA = errors_of(AUTH, ADMIN, INPUT, KeyNotFoundError)


@router.get("/v1/quota", response_model=QuotaInfo, responses=errors_of(AUTH))
def own_quota(request: Request, key: ApiKey = Depends(caller)) -> QuotaInfo:
    """The calling key's limits and what it holds now."""
    return _quota(service(request), key.id)


@router.get("/v1/keys/{key_id}/quota", response_model=QuotaInfo, responses=_KEY_QUOTA)
def get_quota(key_id: str, request: Request, admin: ApiKey = Depends(require_admin)) -> QuotaInfo:
    return _quota(service(request), key_id)


@router.put("/v1/keys/{key_id}/quota", response_model=QuotaInfo, responses=_KEY_QUOTA | errors_of(BODY))
def set_quota(
    key_id: str, body: QuotaLimits, request: Request, admin: ApiKey = Depends(require_admin)
) -> QuotaInfo:
    """Replace the key's own limits; what is already running or kept stays, new requests are checked."""
    service(request).keys.set_own_quota(key_id, body.given())
    return _quota(service(request), key_id)


@router.get("/v1/quota/default", response_model=QuotaLimits, responses=errors_of(AUTH, ADMIN))
def get_default_quota(request: Request, admin: ApiKey = Depends(require_admin)) -> QuotaLimits:
    return QuotaLimits(**service(request).keys.default_quota().to_dict())


@router.put("/v1/quota/default", response_model=QuotaLimits, responses=errors_of(AUTH, ADMIN, BODY))
def set_default_quota(
    body: QuotaLimits, request: Request, admin: ApiKey = Depends(require_admin)
) -> QuotaLimits:
    """Replace the default limits, which every key follows where it sets none (left out: no limit)."""
    service(request).keys.set_default_quota(Quota.from_dict(body.given()))
    return QuotaLimits(**service(request).keys.default_quota().to_dict())
