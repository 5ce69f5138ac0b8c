"""What a request is about, for the cluster: a sandbox, a snapshot, a template, a create, a listing.

Pure: a request's method, path and headers in, a ``Target`` out. It names both
of Ember's surfaces, its own API (``/v1/...``, exposed ports by path or by
``{port}-{id}.{domain}``) and E2B's (its control plane, and in-sandbox calls by
``E2b-Sandbox-Id`` or ``{port}-{id}.{e2b_domain}``), because the error a caller
gets must be in the shape its SDK reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["sandbox", "snapshot", "template", "create", "list", "host"]
Surface = Literal["ember", "e2b", "e2b-envd"]

_EMBER_SANDBOX = re.compile(r"/v1/sandboxes/([^/]+)(/.*)?")
_E2B_SANDBOX = re.compile(r"/(?:v2/)?sandboxes/([^/]+)(/.*)?")
_EMBER_SNAPSHOT = re.compile(r"/v1/snapshots/([^/]+)")
_EMBER_TEMPLATE = re.compile(r"/v1/templates/([^/]+)")
_E2B_TEMPLATE = re.compile(r"/templates/([^/]+)")  # E2B deletes a snapshot as its template
#: Answered by any host: quotas, whose usage a host counts (a gateway has no engine to ask).
_ANY_HOST = re.compile(r"/v1/(quota(/default)?|keys/[^/]+/quota)")
_CREATES = {"/v1/sandboxes": "ember", "/sandboxes": "e2b", "/v2/sandboxes": "e2b"}
#: Listings answered by every host, merged: path -> (surface, what the answer lists).
LISTINGS: dict[str, tuple[Surface, str]] = {
    "/v1/sandboxes": ("ember", "sandboxes"),
    "/v1/snapshots": ("ember", "snapshots"),
    "/v1/templates": ("ember", "templates"),
    "/v1/pool": ("ember", "pools"),
    "/sandboxes": ("e2b", "sandboxes"),
    "/v2/sandboxes": ("e2b", "sandboxes"),
    "/snapshots": ("e2b", "snapshots"),
}


@dataclass(frozen=True)
class Target:
    kind: Kind
    surface: Surface
    #: The sandbox or snapshot id, or the template name, or what a listing lists.
    name: str = ""
    #: True for a read of the sandbox itself (``GET /v1/sandboxes/{id}``), which a lost one answers.
    describes: bool = False


class Hosts:
    """Host-based routing names: ``{port}-{id}.{domain}`` for Ember's ports and E2B's sandboxes."""

    def __init__(self, domain: str | None, e2b_domain: str | None) -> None:
        self._ember = re.compile(rf"(\d+)-([0-9a-zA-Z]+)\.{re.escape(domain)}") if domain else None
        self._e2b = re.compile(rf"(\d+)-([0-9a-zA-Z]+)\.{re.escape(e2b_domain)}") if e2b_domain else None

    def target(self, host: str) -> Target | None:
        name = host.split(":")[0].lower()
        for pattern, surface in ((self._e2b, "e2b-envd"), (self._ember, "ember")):
            match = pattern.fullmatch(name) if pattern is not None else None
            if match:
                return Target("sandbox", surface, match.group(2))  # type: ignore[arg-type]
        return None


def classify(method: str, path: str, headers: dict[bytes, bytes], hosts: Hosts) -> Target | None:
    """What the request is about; None: nothing of the cluster's (this daemon answers it)."""
    sandbox_id = headers.get(b"e2b-sandbox-id")
    if sandbox_id is not None:
        return Target("sandbox", "e2b-envd", sandbox_id.decode("latin-1"))
    if (host := headers.get(b"host")) is not None and (found := hosts.target(host.decode("latin-1"))):
        return found
    if method == "POST" and path in _CREATES:
        return Target("create", _CREATES[path])  # type: ignore[arg-type]
    if method == "GET" and path in LISTINGS:
        surface, what = LISTINGS[path]
        return Target("list", surface, what)
    if _ANY_HOST.fullmatch(path):
        return Target("host", "ember")
    for pattern, kind, surface in (
        (_EMBER_SANDBOX, "sandbox", "ember"),
        (_EMBER_SNAPSHOT, "snapshot", "ember"),
        (_EMBER_TEMPLATE, "template", "ember"),
        (_E2B_SANDBOX, "sandbox", "e2b"),
        (_E2B_TEMPLATE, "snapshot", "e2b"),
    ):
        match = pattern.fullmatch(path)
        if match:
            rest = match.group(2) if pattern.groups > 1 else None
            describes = kind == "sandbox" and method == "GET" and rest is None
            return Target(kind, surface, match.group(1), describes)  # type: ignore[arg-type]
    return None


def error_body(
    surface: Surface, status: int, code: str, message: str, sandbox_id: str = ""
) -> dict[str, Any]:
    """An error as the caller's SDK reads it: Ember's ``{code, message}`` or E2B's."""
    if surface == "ember":
        return {"code": code, "message": message}
    if surface == "e2b-envd":
        return {"code": status, "message": message, "sandboxId": sandbox_id}
    return {"code": status, "message": message}
