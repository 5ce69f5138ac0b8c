"""What routes depend on: the service (engine + keys), the caller's key, the caller's sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from ember.engine import SandboxManager
from ember.engine.sandbox import Sandbox
from ember.errors import PermissionDeniedError
from ember.server.keys import ApiKey, KeyStore

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024 * 1024


@dataclass
class Service:
    """What every route needs: the engine and the key store."""

    manager: SandboxManager
    keys: KeyStore
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    def __post_init__(self) -> None:
        # The engine checks every owner's requests against the quota its key has here.
        self.manager.quotas.limits = self.keys.quota


def ember_version() -> str:
    try:
        return version("ember")
    except PackageNotFoundError:
        return "0+unknown"


def service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


#: Only names the scheme in the spec (``caller`` reads the header itself, the same way).
BEARER = HTTPBearer(auto_error=False, description="An Ember API key")


def caller(request: Request, _: object = Security(BEARER)) -> ApiKey:
    """The API key of the request; 401 for none, unknown or revoked."""
    return service(request).keys.verify(bearer_token(request.headers.get("authorization")))


def sandbox(sandbox_id: str, request: Request, key: ApiKey = Depends(caller)) -> Sandbox:
    """The caller's running sandbox ``sandbox_id`` (another key's is not found)."""
    return service(request).manager.get(sandbox_id, owner=key.id)


def require_admin(key: ApiKey = Depends(caller)) -> ApiKey:
    if not key.admin:
        raise PermissionDeniedError("this needs an admin API key")
    return key
