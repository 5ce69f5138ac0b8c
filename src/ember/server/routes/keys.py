"""API keys (admin only): create, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ember.server.deps import require_admin, service
from ember.server.keys import ApiKey
from ember.server.models import CreateKey, KeyInfo, KeyList, NewKey

router = APIRouter(tags=["keys"])


def _info(key: ApiKey) -> dict[str, object]:
    return {"id": key.id, "name": key.name, "admin": key.admin, "created_at": key.created_at,
            "revoked_at": key.revoked_at}  # fmt: skip


@router.post("/v1/keys", status_code=201, response_model=NewKey)
def create_key(body: CreateKey, request: Request, admin: ApiKey = Depends(require_admin)) -> NewKey:
    key, secret = service(request).keys.create(body.name, admin=body.admin)
    return NewKey(key=secret, **_info(key))  # type: ignore[arg-type]


@router.get("/v1/keys", response_model=KeyList)
def list_keys(request: Request, admin: ApiKey = Depends(require_admin)) -> KeyList:
    return KeyList(keys=[KeyInfo(**_info(k)) for k in service(request).keys.list()])  # type: ignore[arg-type]


@router.delete("/v1/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, request: Request, admin: ApiKey = Depends(require_admin)) -> Response:
    service(request).keys.revoke(key_id)
    return Response(status_code=204)
