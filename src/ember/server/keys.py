"""API keys: random bearer tokens, stored only as SHA-256 hashes in the state database.

Keys are 256-bit random strings, so a plain hash is enough (no slow KDF needed:
there is nothing to brute-force). A key's id is what sandboxes record as their
owner; revoking a key keeps its row so that ``ember keys list`` can show it.

Each key has a quota (``ember.engine.quotas``): the limits it sets itself, and
the default's for those it does not. A key's own limits are kept as it was
given them, so a limit it does not name follows later changes of the default.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from ember.engine.quotas import Quota
from ember.engine.store import Store
from ember.errors import AuthenticationError, InvalidRequestError, KeyNotFoundError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS quota_default (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    quota TEXT NOT NULL
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
        columns = {row[1] for row in store.execute("PRAGMA table_info(api_keys)")}
        if "quota" not in columns:  # a database from before quotas
            store.execute("ALTER TABLE api_keys ADD COLUMN quota TEXT NOT NULL DEFAULT '{}'")

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
        self._require(key_id)
        self._store.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
        )

    def _require(self, key_id: str) -> None:
        if not self._store.execute("SELECT id FROM api_keys WHERE id = ?", (key_id,)):
            raise KeyNotFoundError(f"no API key {key_id!r}")

    # ------------------------------------------------------------ quotas

    def default_quota(self) -> Quota:
        rows = self._store.execute("SELECT quota FROM quota_default WHERE id = 0")
        return Quota.from_dict(json.loads(rows[0][0])) if rows else Quota()

    def set_default_quota(self, quota: Quota) -> None:
        self._store.execute(
            "INSERT OR REPLACE INTO quota_default (id, quota) VALUES (0, ?)", (json.dumps(quota.to_dict()),)
        )

    def own_quota(self, key_id: str) -> dict[str, int | None]:
        """The limits the key sets itself (a missing field follows the default; None is no limit)."""
        rows = self._store.execute("SELECT quota FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise KeyNotFoundError(f"no API key {key_id!r}")
        return json.loads(rows[0][0])  # type: ignore[no-any-return]

    def set_own_quota(self, key_id: str, own: dict[str, object]) -> None:
        """Replace the key's own limits (checked: unknown fields and bad values change nothing)."""
        Quota.from_dict(own)
        self._require(key_id)
        self._store.execute("UPDATE api_keys SET quota = ? WHERE id = ?", (json.dumps(own), key_id))

    def quota(self, key_id: str) -> Quota:
        """The limits in force for a key (the engine's ``Quotas.limits``); an unknown id gets the default."""
        try:
            own = self.own_quota(key_id)
        except KeyNotFoundError:
            own = {}
        return self.default_quota().under(own)


def _row(row: tuple) -> ApiKey:  # type: ignore[type-arg]
    key_id, name, admin, created_at, revoked_at = row
    return ApiKey(id=key_id, name=name, admin=bool(admin), created_at=created_at, revoked_at=revoked_at)
