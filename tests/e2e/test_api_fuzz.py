"""The live daemon's HTTP API fuzzed by schemathesis: no server error, every answer as its spec says.

schemathesis (4.x) loads the daemon's ``/openapi.json`` (Ember's API) and
``/e2b/openapi.json`` (the E2B control plane); each operation's Hypothesis
strategies (``as_strategy``, valid and invalid requests) run as a subtest, and
every answer is checked: no 5xx, and a status, content type and body the spec
documents; for an error, a code the route lists at that status
(``x-error-codes``); for an NDJSON stream, lines that end with a result or an
error. (schemathesis's lazy pytest loader, ``from_fixture``, which a session
daemon would need, does not run under pytest 9.2: it sets ``Node._nodeid``.)

Every create boots or restores a real VM (about a second under TCG from template
base, 7-15 s as a cold boot), so: the routes that make VMs (create, fork,
snapshot, template) get a few examples each, and a create's shape, when it is a
valid one, is pinned to template base's (a restore, not a cold boot), a fork's
count to at most 2; the routes that act in a sandbox get a live one's id most of
the time (else an unknown id), except those that would end it (delete, a new
lifetime, pause). Not fuzzed: the exposed-port proxy (it answers whatever the
server in the guest does) and template imports from OCI images (they would pull
from registries on the internet). What the fuzzer makes belongs to an API key of
its own and is deleted at the end, and the test checks that nothing of it is
left; the default quota, which the fuzzer may set (its key is an admin's), is
put back as it was.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from e2e_support import Daemon
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from ember.client import Sandbox
from ember.protocol.bounds import (
    MAX_DISK_MIB,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_DISK_MIB,
    MIN_MEMORY_MIB,
    MIN_VCPUS,
)
from ember.protocol.codes import ErrorCode

#: Unset: the same cases every run (derandomized), as CI wants; EMBER_FUZZ_SEED=N explores others.
SEED = int(os.environ["EMBER_FUZZ_SEED"]) if os.environ.get("EMBER_FUZZ_SEED") else None
#: Valid and invalid requests per operation (EMBER_FUZZ_EXAMPLES=N for a longer run).
MAX_EXAMPLES = int(os.environ.get("EMBER_FUZZ_EXAMPLES", "10"))
#: Routes that make VMs: a few valid requests each.
VM_EXAMPLES = 3
#: Template base's shape (the e2e daemon's `image build`): a create of it is a restore.
BASE_SHAPE = {"vcpus": (2, MIN_VCPUS, MAX_VCPUS), "memory_mb": (512, MIN_MEMORY_MIB, MAX_MEMORY_MIB),
              "disk_mb": (4096, MIN_DISK_MIB, MAX_DISK_MIB)}  # fmt: skip
MAX_FORK_COUNT = 2
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")  # fmt: skip


@dataclass
class FuzzAccount:
    """An admin API key of the fuzzer's own, and what existed before it ran."""

    daemon: Daemon
    key: str
    key_id: str
    templates_before: set[str]
    keys_before: set[str]
    default_quota: dict[str, Any]
    #: Statuses answered, per operation.
    answers: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def client(self) -> httpx.Client:
        return _client(self.daemon.url, self.key)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _names(response: httpx.Response, listing: str, name: str) -> set[str]:
    response.raise_for_status()
    return {item[name] for item in response.json()[listing]}


@pytest.fixture(scope="module")
def fuzz_account(daemon: Daemon) -> Iterator[FuzzAccount]:
    with _client(daemon.url, daemon.api_key) as admin:
        keys_before = _names(admin.get("/v1/keys"), "keys", "id")
        templates_before = _names(admin.get("/v1/templates"), "snapshots", "name")
        default_quota = admin.get("/v1/quota/default").raise_for_status().json()
        made = admin.post("/v1/keys", json={"name": "fuzz", "admin": True}).raise_for_status().json()
        account = FuzzAccount(daemon, made["key"], made["id"], templates_before, keys_before, default_quota)
        try:
            yield account
        finally:
            left = _clean_up(account, admin)
        statuses = sum(account.answers.values(), Counter())
        print(f"\nschemathesis {schemathesis.__version__}: {statuses.total()} cases, {dict(statuses)}")
        assert not left, f"the fuzzer's sandboxes, snapshots or templates outlived it: {left}"


def _clean_up(account: FuzzAccount, admin: httpx.Client) -> list[str]:
    """Delete what the fuzzer made; returns what is still there afterwards."""
    with account.client() as client:
        for sandbox_id in _names(client.get("/v1/sandboxes"), "sandboxes", "id"):
            client.delete(f"/v1/sandboxes/{sandbox_id}")
        for snapshot_id in _names(client.get("/v1/snapshots"), "snapshots", "id"):
            client.delete(f"/v1/snapshots/{snapshot_id}")
        for name in _names(client.get("/v1/templates"), "snapshots", "name") - account.templates_before:
            client.delete(f"/v1/templates/{name}")
        left = sorted(_names(client.get("/v1/sandboxes"), "sandboxes", "id"))
        left += sorted(_names(client.get("/v1/snapshots"), "snapshots", "id"))
        left += sorted(_names(client.get("/v1/templates"), "snapshots", "name") - account.templates_before)
    admin.put("/v1/quota/default", json=account.default_quota).raise_for_status()
    # Keys it made (and its own) are revoked with the daemon's key: the fuzzer may have revoked its own.
    for key in admin.get("/v1/keys").json()["keys"]:
        if key["id"] not in account.keys_before and key["revoked_at"] is None:
            admin.delete(f"/v1/keys/{key['id']}").raise_for_status()
    return left


@pytest.fixture(scope="module")
def live_sandbox(fuzz_account: FuzzAccount) -> Iterator[str]:
    """The sandbox the in-sandbox routes act on, with a network (so that ports can be exposed)."""
    daemon = fuzz_account.daemon
    with Sandbox(base_url=daemon.url, api_key=fuzz_account.key, network="full", timeout=1800) as sandbox:
        yield sandbox.id


def _schema(account: FuzzAccount, spec_path: str, headers: dict[str, str]) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "base-url": account.daemon.url,
            "headers": headers,
            "request-timeout": 120,
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )
    return schemathesis.openapi.from_url(f"{account.daemon.url}{spec_path}", config=config)


def _fuzz(
    subtests: Any, account: FuzzAccount, schema: Any, live_sandbox: str, live: str, vm_makers: str
) -> None:
    """Every operation of ``schema`` with valid and with invalid requests, a subtest each.

    Operations whose label matches ``live`` act on the live sandbox four times in
    five; those matching ``vm_makers`` get ``VM_EXAMPLES`` valid requests.
    """
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        valid = VM_EXAMPLES if re.search(vm_makers, label) else MAX_EXAMPLES
        plan = [(GenerationMode.POSITIVE, valid)]
        if _has_invalid_inputs(operation.definition.raw):
            plan.append((GenerationMode.NEGATIVE, MAX_EXAMPLES))
        for mode, examples in plan:
            strategy = operation.as_strategy(mode)
            if re.search(live, label):
                in_live = operation.as_strategy(mode, path_parameters={"sandbox_id": live_sandbox})
                strategy = st.integers(0, 4).flatmap(lambda n, a=in_live, b=strategy: a if n else b)
            with subtests.test(msg=f"{label} ({mode.value})"):
                _given(strategy, examples, account)()


def _has_invalid_inputs(definition: dict[str, Any]) -> bool:
    """Whether a request can be invalid: it has a body, a query parameter or a path parameter
    that is not any string (an id is: an unknown one is a 404, which valid requests try)."""
    return "requestBody" in definition or any(
        p["in"] != "path" or p["schema"].get("type") != "string" or set(p["schema"]) - {"type", "title"}
        for p in definition.get("parameters", [])
    )


def _given(strategy: Any, examples: int, account: FuzzAccount) -> Any:
    # No shrinking: a failing case is reported as it came (shrinking would replay VM work).
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        _run(case, account)

    return run if SEED is None else seed(SEED)(run)


def _economical(case: schemathesis.Case) -> None:
    """A valid create of another shape would boot cold, a fork make 16 VMs: pin those, not invalid ones."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.operation.label in ("POST /v1/sandboxes",):
        for name, (base, low, high) in BASE_SHAPE.items():
            value = body.get(name)
            if type(value) is int and low <= value <= high:
                body[name] = base
    if case.operation.label.endswith("/fork") and type(body.get("count")) is int and body["count"] > 1:
        body["count"] = min(body["count"], MAX_FORK_COUNT)


def _check_error_code(case: schemathesis.Case, response: Any) -> None:
    """An error's code is one the route documents for that status (the spec's x-error-codes)."""
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code), {})
    codes = documented.get("x-error-codes")
    if response.status_code < 400 or codes is None:
        return
    code = json.loads(response.content)["code"]
    assert code in codes, f"{case.operation.label}: {response.status_code} {code!r} is not in {codes}"


def _check_stream(case: schemathesis.Case, response: Any) -> None:
    """An NDJSON answer: one JSON object a line, the last a result or an error with a known code."""
    if not response.headers.get("content-type", [""])[0].startswith("application/x-ndjson"):
        return
    lines = [json.loads(line) for line in response.content.splitlines()]
    assert lines and lines[-1]["type"] in ("result", "error"), f"{case.operation.label}: {lines[-3:]}"
    assert all(line["type"] in ("start", "stdout", "stderr") for line in lines[:-1])
    if lines[-1]["type"] == "error":
        assert lines[-1]["code"] in {code.value for code in ErrorCode}, lines[-1]


def _run(case: schemathesis.Case, account: FuzzAccount) -> None:
    _economical(case)
    response = case.call_and_validate()
    account.answers[case.operation.label][response.status_code] += 1
    _check_error_code(case, response)
    _check_stream(case, response)


def test_ember_api_answers_every_generated_request_as_its_spec_says(
    subtests: Any, fuzz_account: FuzzAccount, live_sandbox: str
) -> None:
    schema = _schema(fuzz_account, "/openapi.json", {"Authorization": f"Bearer {fuzz_account.key}"})
    _fuzz(
        subtests,
        fuzz_account,
        schema.exclude(path_regex=r"/ports/\{port\}/").exclude(name="POST /v1/templates"),
        live_sandbox,
        # Not deleting it, nor giving it a lifetime (it could be a millisecond).
        live=r"^(?!DELETE /v1/sandboxes/\{sandbox_id\}$|POST /v1/sandboxes/\{sandbox_id\}/timeout$)"
        r".*\{sandbox_id\}",
        vm_makers=r"^POST /v1/sandboxes(/\{sandbox_id\}/(fork|snapshots|template))?$",
    )


def test_e2b_control_plane_answers_every_generated_request_as_its_spec_says(
    subtests: Any, fuzz_account: FuzzAccount, live_sandbox: str
) -> None:
    _fuzz(
        subtests,
        fuzz_account,
        _schema(fuzz_account, "/e2b/openapi.json", {"X-API-KEY": fuzz_account.key}),
        live_sandbox,
        # Not killing, pausing or timing it out.
        live=r"^(GET /sandboxes/|POST (/v2)?/sandboxes/\{sandbox_id\}/(connect|resume|fork|snapshots)$"
        r"|PUT /sandboxes/\{sandbox_id\}/network$)",
        vm_makers=r"^POST ((/v2)?/sandboxes|/sandboxes/\{sandbox_id\}/(fork|snapshots))$",
    )
