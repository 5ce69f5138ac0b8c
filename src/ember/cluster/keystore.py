"""API keys kept in etcd, so that a key works on every host of the cluster.

etcd holds each key's row (``/ember/keys/<sha256 of the secret>``: the hash, never
the secret, with every column of the local ``api_keys`` table, whatever columns it
has); each host keeps the local table as a copy, written from the mirror's watch.
So checking a key stays a local lookup, and goes on working while etcd has no
quorum, when only creating and revoking keys and changing quotas is refused
(``cluster_unavailable``). A key is written to etcd before it is handed out or
counts as revoked; the default quota is kept there too. (A quota's usage is
counted cluster-wide from the catalog: ``Node.usage``.)

The key routes are synchronous (run in worker threads); the etcd writes run on
the event loop, where the etcd client lives, and the thread waits for them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.from_thread

from ember import errors
from ember.cluster.catalog import unavailable
from ember.cluster.etcd import Etcd, EtcdUnavailable, KeyValue, absent, put_op
from ember.cluster.mirror import Mirror
from ember.cluster.records import KEYS, QUOTA_DEFAULT
from ember.engine.quotas import Quota
from ember.engine.store import Store
from ember.server.keys import ApiKey, KeyStore

log = logging.getLogger("ember.cluster")


class ClusterKeyStore(KeyStore):
    def __init__(self, store: Store, etcd: Etcd, mirror: Mirror) -> None:
        super().__init__(store)
        self._etcd = etcd
        self._mirror = mirror
        self._columns = [row[1] for row in store.execute("PRAGMA table_info(api_keys)")]
        mirror.listeners.append(self._on_change)

    # ------------------------------------------------------------ writes go to etcd first

    def create(self, *args: Any, **kwargs: Any) -> tuple[ApiKey, str]:
        record, secret = super().create(*args, **kwargs)
        row = self._row(record.id)
        try:
            taken = not self._wait(self._put, row, True)
        except BaseException:
            self._store.execute("DELETE FROM api_keys WHERE id = ?", (record.id,))
            raise
        if taken:  # the same secret was registered on another host first: that row is the key
            self._store.execute("DELETE FROM api_keys WHERE id = ?", (record.id,))
            kv = self._wait(self._etcd.get, KEYS + row["hash"])
            if kv is not None:
                self._write(json.loads(kv.value))
            found = self._find(secret)
            if found is None:
                raise errors.ConflictError("that key was registered and removed meanwhile; try again")
            return found, secret
        return record, secret

    def set_own_quota(self, key_id: str, own: dict[str, object]) -> None:
        before = (
            self._row(key_id)
            if self._store.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,))
            else None
        )
        super().set_own_quota(key_id, own)  # checks it, and writes the local copy
        try:
            self._wait(self._put, self._row(key_id), False)
        except BaseException:
            if before is not None:
                self._write(before)
            raise

    def set_default_quota(self, quota: Quota) -> None:
        self._wait(self._put_value, QUOTA_DEFAULT, json.dumps(quota.to_dict()).encode())
        super().set_default_quota(quota)

    def revoke(self, key_id: str) -> None:
        rows = self._store.execute("SELECT id FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise errors.NotFoundError(f"no API key {key_id!r}", code="key_not_found")
        row = self._row(key_id)
        if row.get("revoked_at") is None:
            row["revoked_at"] = time.time()
            self._wait(self._put, row, False)
            self._write(row)

    async def _put(self, row: dict[str, Any], new: bool) -> bool:
        key, value = KEYS + row["hash"], json.dumps(row).encode()
        if not new:
            return await self._put_value(key, value)
        try:
            return bool(await self._etcd.txn([absent(key)], [put_op(key, value)]))
        except EtcdUnavailable as exc:
            raise unavailable(exc, "store API keys") from exc

    async def _put_value(self, key: str, value: bytes) -> bool:
        try:
            await self._etcd.put(key, value)
        except EtcdUnavailable as exc:
            raise unavailable(exc, "store API keys") from exc
        return True

    @staticmethod
    def _wait(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``function`` on the event loop from the route's worker thread and wait for it."""
        return anyio.from_thread.run(function, *args)

    # ------------------------------------------------------------ the local copy

    def load(self) -> None:
        """Make the local table what etcd holds (once the mirror is loaded)."""
        rows = [json.loads(kv.value) for kv in self._mirror.under(KEYS)]
        hashes = {row["hash"] for row in rows}
        for (hash_,) in self._store.execute("SELECT hash FROM api_keys"):
            if hash_ not in hashes:
                self._store.execute("DELETE FROM api_keys WHERE hash = ?", (hash_,))
        for row in rows:
            self._write(row)
        default = self._mirror.items.get(QUOTA_DEFAULT)
        if default is not None:
            self._on_change(QUOTA_DEFAULT, default)

    def _on_change(self, key: str, kv: KeyValue | None) -> None:
        if key == QUOTA_DEFAULT and kv is not None:
            super().set_default_quota(Quota.from_dict(json.loads(kv.value)))
            return
        if not key.startswith(KEYS):
            return
        if kv is None:
            self._store.execute("DELETE FROM api_keys WHERE hash = ?", (key[len(KEYS) :],))
        else:
            self._write(json.loads(kv.value))

    def _row(self, key_id: str) -> dict[str, Any]:
        columns = ", ".join(self._columns)
        values = self._store.execute(f"SELECT {columns} FROM api_keys WHERE id = ?", (key_id,))[0]
        return dict(zip(self._columns, values, strict=True))

    def _write(self, row: dict[str, Any]) -> None:
        names = [c for c in self._columns if c in row]
        marks = ", ".join("?" for _ in names)
        self._store.execute(
            f"INSERT OR REPLACE INTO api_keys ({', '.join(names)}) VALUES ({marks})",
            tuple(row[c] for c in names),
        )
