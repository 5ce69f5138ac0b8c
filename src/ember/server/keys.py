"""API keys: random bearer tokens, stored only as SHA-256 hashes in the state database.

Keys are 256-bit random strings, so a plain hash is enough (no slow KDF needed:
there is nothing to brute-force). A key's id is what sandboxes record as their
owner; revoking a key keeps its row so that ``ember keys list`` can show it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from ember.engine.store import Store
from ember.errors import AuthenticationError, InvalidRequestError, NotFoundError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
KEY_PREFIX = "ember_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created_at: float
    revoked_at: float | None = None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        store.executescript(_SCHEMA)

    def create(self, name: str, admin: bool = False, key: str | None = None) -> tuple[ApiKey, str]:
        """A new key; the secret is returned here and never again."""
        if not name or len(name) > 100:
            raise InvalidRequestError("a key needs a name of 1 to 100 characters")
        secret = key or KEY_PREFIX + secrets.token_urlsafe(32)
        if len(secret) < 16:
            raise InvalidRequestError("an API key must be at least 16 characters long")
        record = ApiKey(id=secrets.token_hex(6), name=name, admin=admin, created_at=time.time())
        self._store.execute(
            "INSERT INTO api_keys (id, name, hash, admin, created_at) VALUES (?, ?, ?, ?, ?)",
            (record.id, name, _hash(secret), int(admin), record.created_at),
        )
        return record, secret

    def ensure(self, secret: str, name: str) -> ApiKey:
        """Register ``secret`` as an admin key unless it already is one (EMBER_API_KEY)."""
        found = self._find(secret)
        if found is not None and found.revoked_at is None:
            return found
        if found is not None:
            raise AuthenticationError("EMBER_API_KEY names a revoked key; set another one")
        return self.create(name, admin=True, key=secret)[0]

    def verify(self, secret: str | None) -> ApiKey:
        if not secret:
            raise AuthenticationError("send an API key as 'Authorization: Bearer <key>'")
        found = self._find(secret)
        if found is None or found.revoked_at is not None:
            raise AuthenticationError("the API key is not valid (unknown or revoked)")
        return found

    def _find(self, secret: str) -> ApiKey | None:
        rows = self._store.execute(
            "SELECT id, name, admin, created_at, revoked_at FROM api_keys WHERE hash = ?", (_hash(secret),)
        )
        return _row(rows[0]) if rows else None

    def list(self) -> list[ApiKey]:
        rows = self._store.execute(
            "SELECT id, name, admin, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )
        return [_row(row) for row in rows]

    def has_admin(self) -> bool:
        return bool(self._store.execute("SELECT 1 FROM api_keys WHERE admin = 1 AND revoked_at IS NULL"))

    def revoke(self, key_id: str) -> None:
        rows = self._store.execute("SELECT id FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFoundError(f"no API key {key_id!r}", code="key_not_found")
        self._store.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
        )


def _row(row: tuple) -> ApiKey:  # type: ignore[type-arg]
    key_id, name, admin, created_at, revoked_at = row
    return ApiKey(id=key_id, name=name, admin=bool(admin), created_at=created_at, revoked_at=revoked_at)
