"""The cluster's front door: ASGI middleware that sends each request to the host that must answer it.

In front of a host's app (or a gateway's, which has no engine):

- a call for a sandbox goes to its host (the catalog says which), or to this
  daemon's own app when it runs here; a sandbox lost with its host answers
  ``sandbox_dead`` with the reason (reading it shows it dead), one whose host is
  away but not yet reported lost answers ``host_unavailable``;
- a snapshot or template call goes to a live host that holds it;
- a create is placed (``ember.cluster.placement``) and sent to the chosen host,
  or the next one when that host is full or gone; the host copies the snapshot it
  restores first if it lacks it, and writes the sandbox into the catalog itself;
- a listing is asked of every host and merged (``ember.cluster.listing``);
- a quota's answer (it counts usage) comes from this host, or from a host on a gateway;
- anything else (health, keys, the cluster's status) is this daemon's.

Requests another member forwarded (``X-Ember-Forwarded-By``) are answered here,
never forwarded again. Errors take the shape of the surface the caller used.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from ember import errors
from ember.cluster.listing import catalogued, lost_info, merge
from ember.cluster.proxy import FORWARDED_BY
from ember.cluster.requests import Hosts, Target, classify, error_body

if TYPE_CHECKING:
    from ember.cluster.node import Node

log = logging.getLogger("ember.cluster")

MAX_CREATE_BODY = 1 << 20
#: How many hosts a create tries, best first, when one is full or does not answer.
CREATE_TRIES = 3
_RETRY_CODES = {
    "resource_exhausted",
    "disk_full",
    "cluster_unavailable",
    "host_unavailable",
    "isolation_unavailable",
}

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class ClusterRouter:
    def __init__(self, app: ASGIApp, node: Node) -> None:
        self.app = app
        self.node = node
        settings = node.engine_settings
        self._hosts = Hosts(settings.domain, settings.e2b_domain)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        method = scope.get("method", "GET")
        target = classify(method, scope["path"], headers, self._hosts)
        if target is None:
            await self.app(scope, receive, send)
            return
        try:
            if FORWARDED_BY.encode() in headers:
                await self._here(target, scope, receive, send)
            elif target.kind == "create":
                await self._create(target, scope, receive, send)
            elif target.kind == "list":
                await self._list(target, scope, send)
            elif target.kind == "host":
                await self._any_host(scope, receive, send)
            else:
                await self._route(target, scope, receive, send)
        except errors.EmberError as exc:
            await self._refuse(target, exc, scope, receive, send)

    async def _here(self, target: Target, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A request another member sent: this daemon answers (a create first fetches what it restores)."""
        if target.kind == "create" and self.node.manager is not None:
            body = await _read(receive, MAX_CREATE_BODY)
            _, source = await self.node.resolve(target.surface, _json(body))
            await self.node.ensure_local(source)
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    # ------------------------------------------------------------ one sandbox, snapshot or template

    async def _route(self, target: Target, scope: dict[str, Any], receive: Any, send: Any) -> None:
        node = self.node
        if target.kind == "sandbox":
            host_name = await self._sandbox_host(target, scope, send)
        else:
            host_name = await node.holder_of(target.kind, target.name)
        if host_name is None or host_name == node.me:
            if node.manager is None:
                what = "sandbox" if target.kind == "sandbox" else target.kind
                raise errors.NotFoundError(
                    f"no {what} {target.name!r} in the cluster", code=f"{what}_not_found"
                )
            await self.app(scope, receive, send)
            return
        if host_name == "":  # answered already (a lost sandbox described)
            return
        host = node.membership.host(host_name)
        if host is None:
            raise node.away(host_name, f"{target.kind} {target.name}")
        forward = node.forwarder.websocket if scope["type"] == "websocket" else node.forwarder.http
        await forward(host.address, host.name, scope, receive, send)

    async def _sandbox_host(self, target: Target, scope: dict[str, Any], send: Any) -> str | None:
        """The host to answer for the sandbox; "" when answered here from the catalog (lost)."""
        node = self.node
        if node.runs(target.name):
            return node.me
        entry = await node.catalog.lookup(target.name)
        if entry is None or entry.state != "lost":
            return entry.host if entry is not None else None
        # Another key's (or no key's) lost sandbox is not found; E2B's in-sandbox calls carry no key.
        if target.surface != "e2b-envd" and node.caller(target.surface, scope) != entry.owner:
            return None
        if target.describes and target.surface == "ember" and scope["type"] == "http":
            await JSONResponse(lost_info(entry))(scope, _no_body, send)
            return ""
        raise errors.SandboxDeadError(f"sandbox {entry.id} is dead: {entry.end_reason}")

    async def _any_host(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """This host answers; a gateway asks a host (the first by name)."""
        if self.node.manager is not None:
            await self.app(scope, receive, send)
            return
        hosts = sorted(self.node.membership.hosts(), key=lambda h: h.name)
        if not hosts:
            raise errors.HostUnavailableError("no host is in the cluster now to answer this")
        await self.node.forwarder.http(hosts[0].address, hosts[0].name, scope, receive, send)

    # ------------------------------------------------------------ creates

    async def _create(self, target: Target, scope: dict[str, Any], receive: Any, send: Any) -> None:
        node = self.node
        node.require_writable()
        body = await _read(receive, MAX_CREATE_BODY)
        headers = dict(scope.get("headers", []))
        pinned = headers.get(b"ember-host")
        want, source = await node.resolve(target.surface, _json(body), pinned.decode() if pinned else None)
        ranked = node.rank(want)
        if not ranked:
            raise node.no_room(want)
        for attempt, host in enumerate(ranked[:CREATE_TRIES]):
            last = attempt == min(len(ranked), CREATE_TRIES) - 1
            with node.placing(host.name, want.memory_mib):
                if host.name == node.me:
                    await node.ensure_local(source)
                    await self.app(scope, _replay(body, receive), send)
                    return
                try:
                    answer = await node.forwarder.client.request(
                        scope["method"],
                        host.address + scope["path"],
                        params=scope.get("query_string", b"").decode("latin-1") or None,
                        headers=node.forwarder.headers(scope),
                        content=body,
                    )
                except Exception as exc:
                    if last:
                        raise node.away(host.name, "the create") from exc
                    log.warning(
                        "create placed on %s, which did not answer (%s); trying the next", host.name, exc
                    )
                    continue
                if not last and _retry(answer.status_code, answer.content):
                    log.info(
                        "host %s could not take the create (%s); trying the next",
                        host.name,
                        answer.text[:200],
                    )
                    continue
                await Response(answer.content, answer.status_code, _kept(answer.headers.raw))(
                    scope, receive, send
                )
                return

    # ------------------------------------------------------------ listings

    async def _list(self, target: Target, scope: dict[str, Any], send: Any) -> None:
        node = self.node
        owner = node.caller(target.surface, scope)
        if owner is None:
            raise errors.AuthenticationError("send a valid API key")
        hosts = node.membership.hosts()
        path = scope["path"] + (
            "?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else ""
        )
        headers = node.forwarder.headers(scope)
        answers = await asyncio.gather(
            *(node.forwarder.call(h.address, "GET", path, headers) for h in hosts), return_exceptions=True
        )
        merged: list[Any] = []
        silent = set()
        for host, answer in zip(hosts, answers, strict=True):
            if isinstance(answer, BaseException) or answer.status_code >= 500:
                silent.add(host.name)
                log.warning("host %s did not answer a listing: %s", host.name, answer)
                continue
            if answer.is_error:  # the same for every host (a bad query): that answer is the answer
                await Response(answer.content, answer.status_code, _kept(answer.headers.raw))(
                    scope, _no_body, send
                )
                return
            merged.append(answer.json())
        result = merge(target.surface, target.name, merged)
        if target.surface == "ember" and target.name == "sandboxes":
            state = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("state", ["running"])[0]
            silent |= {name for name in node.membership.down_since if name not in {h.name for h in hosts}}
            listed = {item.get("id") for item in result["sandboxes"]}
            entries = [entry for _, entry in node.catalog.entries() if entry.id not in listed]
            result["sandboxes"] += catalogued(entries, owner, silent, ended=state == "all")
        await JSONResponse(result)(scope, _no_body, send)

    # ------------------------------------------------------------ errors

    async def _refuse(
        self, target: Target, exc: errors.EmberError, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        body = error_body(target.surface, exc.status, exc.code, exc.message, target.name)
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(JSONResponse(body, exc.status))
            return
        await JSONResponse(body, exc.status)(scope, receive, send)


async def _read(receive: Any, limit: int) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.CancelledError("the client went away")
        body += message.get("body", b"")
        if len(body) > limit:
            raise errors.PayloadTooLargeError(f"a create's body is at most {limit} bytes")
        if not message.get("more_body", False):
            return body


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives ``body`` once, then whatever the client sends next (its disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # type: ignore[no-any-return]

    return replay


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _retry(status: int, body: bytes) -> bool:
    """Whether a host's refusal of a create means another host may take it (it made nothing)."""
    code = _json(body).get("code")
    return code in _RETRY_CODES or (status in (503, 507) and not isinstance(code, str))


def _kept(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    drop = {b"content-length", b"transfer-encoding", b"connection", b"content-encoding"}
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k.lower() not in drop}
