"""An etcd v3 client over etcd's gRPC gateway (JSON over HTTP), on httpx.

Why not a gRPC client: the maintained asyncio one on PyPI (``aetcd``) opens a
single plaintext channel to one member, which cannot fail over between members
nor speak TLS; the others are unmaintained or synchronous. Every etcd v3 server,
Debian's 3.4 included, serves the same API as JSON under ``/v3/``, and httpx
(already Ember's HTTP client) gives asyncio, TLS with client certificates and
timeouts. What Ember needs is small: ranges, puts, deletes, transactions, leases
and watches.

Every call has a deadline and tries the members in turn, starting with the one
that answered last; a member without quorum answers nothing before the deadline,
so a lost quorum surfaces as ``EtcdUnavailable`` within ``timeout_s``, never as a
hang. Keys and values are bytes on the wire (base64 in the JSON); here keys are
text and values bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

log = logging.getLogger("ember.cluster")

DEFAULT_TIMEOUT_S = 2.0
#: How long a watch stream may stay silent before it is taken as dead: etcd sends progress
#: notifications only when asked, so a quiet prefix is normal; a dead member is not.
WATCH_IDLE_S = 30.0


class EtcdError(Exception):
    """etcd refused a request (``code`` is its gRPC status code)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No member answered within the deadline: they are down, or have no quorum."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True)
class Event:
    """One change from a watch: a put (``kv`` is the new value) or a delete (``kv.value`` is empty)."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` compared with ``value``."""

    key: str
    target: Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
    value: int | bytes
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"] = "EQUAL"

    def wire(self) -> dict[str, Any]:
        field = {
            "VERSION": "version",
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VALUE": "value",
            "LEASE": "lease",
        }[self.target]
        value = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: value}


def absent(key: str) -> Compare:
    return Compare(key, "CREATE", 0)


def present(key: str) -> Compare:
    return Compare(key, "VERSION", 0, "GREATER")


def unchanged(kv: KeyValue) -> Compare:
    return Compare(kv.key, "MOD", kv.mod_revision)


def put_op(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


@dataclass(frozen=True)
class TlsFiles:
    """A CA to trust and, for mutual TLS, this host's certificate and key (PEM files)."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


class Etcd:
    """An etcd cluster, reached through any of ``endpoints`` (``http(s)://host:port``)."""

    def __init__(
        self, endpoints: Sequence[str], tls: TlsFiles | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout_s = timeout_s
        self._preferred = 0
        verify: ssl.SSLContext | bool = tls.context() if tls is not None else True
        self._client = httpx.AsyncClient(verify=verify, trust_env=False, timeout=timeout_s)

    async def close(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ the one request path

    async def call(self, path: str, body: dict[str, Any], endpoint: str | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``: one member, or each in turn until one answers in time."""
        if endpoint is not None:
            return await self._post(endpoint, path, body, self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        failures = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._preferred + step) % count
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                break
            try:
                # A member that is down refuses at once; one without quorum holds the request,
                # so each gets a share of the deadline and the others still get their turn.
                answer = await self._post(self.endpoints[index], path, body, remaining / (count - step))
            except EtcdUnavailable as exc:
                failures.append(f"{self.endpoints[index]}: {exc}")
                continue
            self._preferred = index
            return answer
        raise EtcdUnavailable(
            "no etcd member answered in time (" + "; ".join(failures or ["timed out"]) + ")"
        )

    async def _post(self, endpoint: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            response = await self._client.post(f"{endpoint}/v3/{path}", json=body, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        try:
            data = response.json()
        except ValueError:
            raise EtcdUnavailable(f"HTTP {response.status_code} with a body that is not JSON") from None
        error = data.get("error") if isinstance(data, dict) else None
        if response.is_error or error:
            message = str(error or data.get("message") or f"HTTP {response.status_code}")
            code = int(data.get("code", 0) or 0) if isinstance(data, dict) else 0
            # 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED: no leader, or no quorum to commit.
            if code in (4, 14) or (response.status_code >= 500 and code not in (3, 5, 9)):
                raise EtcdUnavailable(message, code)
            raise EtcdError(message, code)
        if isinstance(data, dict) and isinstance(data.get("result"), dict):
            return data["result"]  # streaming endpoints (keepalive) wrap their message
        return data  # type: ignore[no-any-return]

    # ------------------------------------------------------------ keys

    async def get(self, key: str, serializable: bool = False) -> KeyValue | None:
        """The key's value, or None; ``serializable`` reads the member's copy (works without quorum)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if serializable:
            body["serializable"] = True
        kvs = (await self.call("kv/range", body)).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, serializable: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the revision they were read at."""
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if serializable:
            body["serializable"] = True
        answer = await self.call("kv/range", body)
        return [_kv(kv) for kv in answer.get("kvs") or []], int(answer["header"]["revision"])

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        answer = await self.call("kv/put", put_op(key, value, lease)["request_put"])
        return int(answer["header"]["revision"])

    async def delete(self, key: str) -> int:
        """Delete ``key``; returns how many keys went (0 or 1)."""
        return int((await self.call("kv/deleterange", {"key": _b64(key)})).get("deleted", 0))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> int:
        """Apply ``success`` if every comparison holds, else ``failure``.

        Returns the revision ``success`` was committed at, or 0 when a comparison failed.
        """
        body = {"compare": [c.wire() for c in compare], "success": list(success), "failure": list(failure)}
        answer = await self.call("kv/txn", body)
        return int(answer["header"]["revision"]) if answer.get("succeeded") else 0

    # ------------------------------------------------------------ leases

    async def grant(self, ttl_s: int) -> int:
        answer = await self.call("lease/grant", {"TTL": str(ttl_s)})
        return int(answer["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL, 0 when it has expired (its keys are gone)."""
        return int((await self.call("lease/keepalive", {"ID": str(lease)})).get("TTL", 0))

    async def time_to_live(self, lease: int) -> int:
        """Seconds left on ``lease`` (-1: expired or unknown)."""
        return int((await self.call("lease/timetolive", {"ID": str(lease)})).get("TTL", -1))

    async def revoke(self, lease: int) -> None:
        await self.call("lease/revoke", {"ID": str(lease)})

    # ------------------------------------------------------------ members

    async def status(self, endpoint: str) -> dict[str, Any]:
        """One member's status (its version, the leader it follows, its raft term)."""
        return await self.call("maintenance/status", {}, endpoint=endpoint)

    async def members(self) -> list[dict[str, Any]]:
        return list((await self.call("cluster/member/list", {})).get("members") or [])

    # ------------------------------------------------------------ watches

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """The changes under ``prefix`` from ``start_revision`` on, one batch per etcd message.

        Ends with ``EtcdUnavailable`` when the member goes away, and with ``EtcdError``
        when the revision was compacted (read the prefix again and watch on from there).
        """
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        endpoint = self.endpoints[self._preferred]
        timeout = httpx.Timeout(self.timeout_s, read=WATCH_IDLE_S)
        try:
            async with self._client.stream(
                "POST", f"{endpoint}/v3/watch", json=body, timeout=timeout
            ) as answer:
                if answer.is_error:
                    raise EtcdUnavailable(f"watch refused with HTTP {answer.status_code}")
                async for line in answer.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdUnavailable(str(message["error"].get("message", message["error"])))
                    result = message.get("result", {})
                    if result.get("compact_revision") and result.get("canceled"):
                        raise EtcdError(f"revision {start_revision} was compacted", code=11)
                    if result.get("canceled"):
                        raise EtcdUnavailable(str(result.get("cancel_reason") or "the watch was cancelled"))
                    events = [
                        Event(e.get("type", "PUT"), _kv(e["kv"]))  # type: ignore[arg-type]
                        for e in result.get("events") or []
                    ]
                    if events:
                        yield events
        except httpx.HTTPError as exc:
            self._preferred = (self._preferred + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"the watch on {endpoint} broke ({type(exc).__name__})") from exc
        self._preferred = (self._preferred + 1) % len(self.endpoints)
        raise EtcdUnavailable(f"the watch on {endpoint} ended")


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` (etcd's range_end)."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return data.decode()


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _kv(wire: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(wire["key"]).decode(),
        value=base64.b64decode(wire.get("value", "")),
        create_revision=int(wire.get("create_revision", 0)),
        mod_revision=int(wire.get("mod_revision", 0)),
        version=int(wire.get("version", 0)),
        lease=int(wire.get("lease", 0)),
    )


async def wait_ready(etcd: Etcd, timeout_s: float) -> None:
    """Wait until a write can be committed (a leader with quorum), or raise EtcdUnavailable."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await etcd.call("kv/range", {"key": _b64("/"), "limit": "1"})
            return
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
