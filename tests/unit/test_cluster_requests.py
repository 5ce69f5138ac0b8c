"""Which request is about what, for the cluster's router, and how cluster-wide listings merge."""

from __future__ import annotations

import pytest

from ember.cluster.listing import catalogued, merge
from ember.cluster.records import SandboxEntry
from ember.cluster.requests import Hosts, Target, classify, error_body

HOSTS = Hosts("sandbox.test", "e2b.test")


def target(method: str, path: str, **headers: str) -> Target | None:
    return classify(
        method, path, {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}, HOSTS
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/sandboxes/ab12", Target("sandbox", "ember", "ab12", describes=True)),
        ("POST", "/v1/sandboxes/ab12/code", Target("sandbox", "ember", "ab12")),
        ("DELETE", "/v1/sandboxes/ab12", Target("sandbox", "ember", "ab12")),
        ("GET", "/v1/sandboxes/ab12/ports/8000/x/y", Target("sandbox", "ember", "ab12")),
        ("POST", "/v1/sandboxes", Target("create", "ember")),
        ("GET", "/v1/sandboxes", Target("list", "ember", "sandboxes")),
        ("GET", "/v1/snapshots", Target("list", "ember", "snapshots")),
        ("DELETE", "/v1/snapshots/s1", Target("snapshot", "ember", "s1")),
        ("DELETE", "/v1/templates/data", Target("template", "ember", "data")),
        ("POST", "/sandboxes", Target("create", "e2b")),
        ("POST", "/v2/sandboxes", Target("create", "e2b")),
        ("GET", "/v2/sandboxes", Target("list", "e2b", "sandboxes")),
        ("POST", "/sandboxes/ab12/connect", Target("sandbox", "e2b", "ab12")),
        ("DELETE", "/templates/s1", Target("snapshot", "e2b", "s1")),
        ("GET", "/health", None),
        ("GET", "/v1/keys", None),
        ("GET", "/v1/cluster", None),
        ("GET", "/v1/quota", Target("host", "ember")),
        ("PUT", "/v1/keys/k1/quota", Target("host", "ember")),
        ("PUT", "/v1/quota/default", Target("host", "ember")),
    ],
)
def test_paths_name_their_target(method: str, path: str, expected: Target | None) -> None:
    assert target(method, path) == expected


def test_e2b_in_sandbox_calls_and_host_names_name_their_sandbox() -> None:
    assert target("POST", "/process.Process/Start", e2b_sandbox_id="ab12") == Target(
        "sandbox", "e2b-envd", "ab12"
    )
    assert target("GET", "/files", host="49983-ab12.e2b.test") == Target("sandbox", "e2b-envd", "ab12")
    assert target("GET", "/", host="8000-ab12.sandbox.test:7070") == Target("sandbox", "ember", "ab12")
    assert target("GET", "/health", host="8000-ab12.elsewhere.test") is None


def test_errors_take_the_shape_of_the_callers_surface() -> None:
    assert error_body("ember", 503, "host_unavailable", "gone") == {
        "code": "host_unavailable",
        "message": "gone",
    }
    assert error_body("e2b", 503, "host_unavailable", "gone") == {"code": 503, "message": "gone"}
    assert error_body("e2b-envd", 502, "x", "gone", "ab12") == {
        "code": 502,
        "message": "gone",
        "sandboxId": "ab12",
    }


def test_listings_merge_and_copies_are_listed_once() -> None:
    answers = [{"sandboxes": [{"id": "a"}]}, {"sandboxes": [{"id": "b"}]}]
    assert merge("ember", "sandboxes", answers) == {"sandboxes": [{"id": "a"}, {"id": "b"}]}
    copies = [{"snapshots": [{"id": "s", "size": 1}]}, {"snapshots": [{"id": "s", "size": 1}, {"id": "t"}]}]
    assert merge("ember", "snapshots", copies) == {"snapshots": [{"id": "s", "size": 1}, {"id": "t"}]}
    templates = [{"snapshots": [{"id": "x", "name": "base"}]}, {"snapshots": [{"id": "x", "name": "base"}]}]
    assert merge("ember", "templates", templates) == {"snapshots": [{"id": "x", "name": "base"}]}
    assert merge("e2b", "snapshots", [[{"snapshotID": "s"}], [{"snapshotID": "s"}]]) == [{"snapshotID": "s"}]


def test_the_catalog_answers_for_silent_hosts_and_the_lost() -> None:
    def entry(sandbox_id: str, host: str, state: str, owner: str = "k1") -> SandboxEntry:
        return SandboxEntry(sandbox_id, host, owner, state, info={"id": sandbox_id, "state": "running"},
                            end_reason="lost with its host h3" if state == "lost" else None)  # fmt: skip

    entries = [entry("a", "h1", "running"), entry("b", "h3", "running"), entry("c", "h3", "lost"),
               entry("d", "h3", "lost", owner="k2")]  # fmt: skip
    assert catalogued(entries, "k1", silent_hosts={"h3"}, ended=False) == [{"id": "b", "state": "running"}]
    listed = catalogued(entries, "k1", silent_hosts=set(), ended=True)
    assert [(i["id"], i["state"], i["end_reason"]) for i in listed] == [
        ("c", "dead", "lost with its host h3")
    ]
