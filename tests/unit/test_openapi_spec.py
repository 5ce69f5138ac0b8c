"""The OpenAPI specs the daemon serves: every route's errors and streams documented, codes that exist.

Built from the real app over an engine that is never started (no VM, no
network): the spec is generated from the routes alone. The e2e fuzz test
(tests/e2e/test_api_fuzz.py) checks the live answers against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember import errors
from ember.engine import SandboxManager
from ember.protocol.codes import ErrorCode
from ember.server.app import create_app
from ember.server.deps import Service
from ember.server.e2b.control import create_control_app
from ember.server.e2b.plane import AccessTokens
from ember.server.keys import KeyStore
from ember.server.openapi import GUEST, errors_of
from ember.settings import Settings


def _classes(cls: type[errors.EmberError]) -> list[type[errors.EmberError]]:
    return [cls, *(found for sub in cls.__subclasses__() for found in _classes(sub))]


STATUS_OF = {cls.code: cls.status for cls in _classes(errors.EmberError) if "code" in vars(cls)}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    data_dir = tmp_path_factory.mktemp("spec")
    settings = Settings(data_dir=data_dir, run_dir=data_dir / "run")
    manager = SandboxManager(settings)
    return Service(manager=manager, keys=KeyStore(manager.store))


@pytest.fixture(scope="module")
def spec(service: Service) -> dict[str, Any]:
    return create_app(service).openapi()


@pytest.fixture(scope="module")
def e2b_spec(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tokens = AccessTokens(Path(tmp_path_factory.mktemp("tokens")) / "secret")
    return create_control_app(service, tokens).openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def test_every_error_response_is_the_error_body_with_codes_of_its_status(spec: dict[str, Any]) -> None:
    body = spec["components"]["schemas"]["ErrorBody"]
    assert set(spec["components"]["schemas"]["ErrorCode"]["enum"]) == {code.value for code in ErrorCode}
    assert body["required"] == ["code", "message"]
    for label, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if not status.isdigit() or int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, label
            assert response["x-error-codes"], label
            for code in response["x-error-codes"]:
                assert STATUS_OF[code] == int(status), f"{label}: {code} is a {STATUS_OF[code]}, not {status}"


def test_every_route_but_health_says_it_needs_a_key_and_none_keeps_fastapis_422(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for label, operation in _operations(spec):
        responses = operation["responses"]
        assert set(responses.get("422", {}).get("x-error-codes", [])) <= {"exec_failed", "python_unavailable"}
        if label != "GET /health":
            assert responses["401"]["x-error-codes"] == ["unauthorized"], label
            assert {"HTTPBearer": []} in operation["security"], label


def test_streams_and_files_have_their_own_media_types(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    for path, method in [
        ("/code", "post"),
        ("/execute", "post"),
        ("/commands", "post"),
        ("/commands/{pid}", "get"),
    ]:
        content = paths[f"/v1/sandboxes/{{sandbox_id}}{path}"][method]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "application/x-ndjson"}, path
        lines = content["application/x-ndjson"]["schema"]
        for ref in lines.get("oneOf", [lines]):
            assert ref["$ref"].rsplit("/", 1)[1] in spec["components"]["schemas"]
    files = paths["/v1/sandboxes/{sandbox_id}/files"]
    assert set(files["get"]["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert set(files["put"]["requestBody"]["content"]) == {"application/octet-stream"}


def test_operation_ids_are_unique(spec: dict[str, Any], e2b_spec: dict[str, Any]) -> None:
    for document in (spec, e2b_spec):
        ids = [operation["operationId"] for _, operation in _operations(document)]
        assert len(ids) == len(set(ids))


def test_the_e2b_control_plane_documents_e2bs_error_body_and_models(e2b_spec: dict[str, Any]) -> None:
    schemas = e2b_spec["components"]["schemas"]
    assert schemas["Error"]["properties"]["code"]["type"] == "integer"
    assert {"Sandbox", "SandboxDetail", "ListedSandbox", "SnapshotInfo"} <= set(schemas)
    assert "ErrorBody" not in schemas and "ExecutionLine" not in schemas
    for label, operation in _operations(e2b_spec):
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }, label


def test_errors_of_groups_codes_by_status() -> None:
    responses = errors_of(GUEST, errors.PathNotFoundError)
    assert responses[404]["x-error-codes"] == ["file_not_found", "sandbox_not_found"]
    assert responses[409]["x-error-codes"] == ["sandbox_not_running"]
    assert set(responses) == {404, 409, 410, 503, 502, 408}
