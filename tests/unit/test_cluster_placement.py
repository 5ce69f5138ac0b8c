"""Placement: best of K among the hosts that fit, holders of a snapshot first, templates next."""

from __future__ import annotations

import random
from collections import Counter

from ember.cluster.placement import Load, Want, rank
from ember.cluster.records import HostRecord

NO_LOAD = Load(committed_mib={}, sandboxes={}, pending_mib={})


def host(
    name: str, free_mib: int = 8192, role: str = "host", templates: tuple[str, ...] = ("base",)
) -> HostRecord:
    return HostRecord(
        name=name,
        address=f"http://{name}:7070",
        role=role,
        vcpus=2,
        free_memory_mib=free_mib,
        templates={t: "snap" for t in templates},
    )


def test_only_hosts_with_room_are_ranked_and_gateways_never() -> None:
    hosts = [host("a", free_mib=256), host("b"), host("gw", role="gateway")]
    assert [h.name for h in rank(hosts, Want(512), NO_LOAD, choices=2)] == ["b"]
    assert rank([host("a", free_mib=256)], Want(512), NO_LOAD, choices=2) == []


def test_pending_creates_count_against_a_hosts_room() -> None:
    hosts = [host("a", free_mib=1024), host("b", free_mib=1024)]
    load = Load(committed_mib={}, sandboxes={}, pending_mib={"a": 768})
    assert [h.name for h in rank(hosts, Want(512), load, choices=2)] == ["b"]


def test_the_least_used_of_the_sample_wins_and_the_rest_follow_by_use() -> None:
    hosts = [host("a"), host("b"), host("c")]
    load = Load(
        committed_mib={"a": 4096, "b": 512, "c": 2048}, sandboxes={"a": 8, "b": 1, "c": 4}, pending_mib={}
    )
    assert [h.name for h in rank(hosts, Want(512), load, choices=3)] == ["b", "c", "a"]


def test_best_of_two_spreads_sandboxes_evenly() -> None:
    hosts = [host(name) for name in "abc"]
    committed: Counter[str] = Counter()
    draw = random.Random(7)
    for _ in range(60):
        load = Load(committed_mib=dict(committed), sandboxes={}, pending_mib={})
        committed[rank(hosts, Want(512), load, choices=2, draw=draw)[0].name] += 512
    assert max(committed.values()) - min(committed.values()) <= 2 * 512, committed


def test_a_snapshots_holders_come_first_while_one_fits() -> None:
    hosts = [host("a"), host("b"), host("c", free_mib=1024)]
    busy = Load(committed_mib={"c": 8000}, sandboxes={"c": 10}, pending_mib={})
    assert rank(hosts, Want(512, holders=["c"]), busy, choices=2)[0].name == "c"
    full = [host("a"), host("b"), host("c", free_mib=100)]
    assert rank(full, Want(512, holders=["c"]), NO_LOAD, choices=2)[0].name in {"a", "b"}


def test_hosts_that_have_the_template_come_first() -> None:
    hosts = [host("a", templates=()), host("b", templates=("data",)), host("c", templates=())]
    assert rank(hosts, Want(512, template="data"), NO_LOAD, choices=2)[0].name == "b"
    assert rank(hosts, Want(512, template="other"), NO_LOAD, choices=2)  # nobody has it: any host


def test_a_pinned_host_is_the_only_one() -> None:
    hosts = [host("a"), host("b")]
    assert [h.name for h in rank(hosts, Want(512, pinned="b"), NO_LOAD, choices=2)] == ["b"]
    assert rank(hosts, Want(512, pinned="z"), NO_LOAD, choices=2) == []
