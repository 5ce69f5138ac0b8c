"""The etcd client (over etcd's JSON gateway) against a real etcd on loopback, and the mirror built on it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ember.cluster.etcd import Etcd, EtcdUnavailable, absent, present, put_op, unchanged, wait_ready
from ember.cluster.mirror import Mirror


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert shutil.which("etcd"), "etcd is not installed: run ./setup (Debian's etcd-server)"
    client, peer = _port(), _port()
    url = f"http://127.0.0.1:{client}"
    data_dir = tmp_path_factory.mktemp("etcd")
    process = subprocess.Popen(
        ["etcd", "--name", "unit", "--data-dir", str(data_dir), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"unit=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield url
    finally:
        process.kill()
        process.wait()


@pytest.fixture
async def etcd(endpoint: str) -> AsyncIterator[Etcd]:
    client = Etcd([endpoint], timeout_s=2.0)
    await wait_ready(client, 20.0)
    yield client
    await client.close()


def key(request: pytest.FixtureRequest, name: str) -> str:
    return f"/test/{request.node.name}/{name}"


async def test_keys_are_put_read_listed_and_deleted(etcd: Etcd, request: pytest.FixtureRequest) -> None:
    await etcd.put(key(request, "a"), b"one")
    await etcd.put(key(request, "b"), b"two")
    found = await etcd.get(key(request, "a"))
    assert found is not None and found.value == b"one" and found.version == 1
    listed, revision = await etcd.range(key(request, ""))
    assert [kv.value for kv in listed] == [b"one", b"two"] and revision >= found.mod_revision
    assert await etcd.delete(key(request, "a")) == 1
    assert await etcd.get(key(request, "a")) is None


async def test_a_transaction_applies_only_while_its_comparisons_hold(
    etcd: Etcd, request: pytest.FixtureRequest
) -> None:
    name = key(request, "claim")
    assert await etcd.txn([absent(name)], [put_op(name, b"first")]) > 0
    assert await etcd.txn([absent(name)], [put_op(name, b"second")]) == 0
    current = await etcd.get(name)
    assert current is not None and current.value == b"first"
    assert await etcd.txn([unchanged(current), present(name)], [put_op(name, b"third")]) > 0
    assert await etcd.txn([unchanged(current)], [put_op(name, b"fourth")]) == 0  # it changed since
    assert (await etcd.get(name)).value == b"third"  # type: ignore[union-attr]


async def test_a_leases_keys_go_when_it_is_not_renewed(etcd: Etcd, request: pytest.FixtureRequest) -> None:
    lease = await etcd.grant(2)
    await etcd.put(key(request, "member"), b"here", lease=lease)
    assert await etcd.keepalive(lease) == 2
    assert 0 < await etcd.time_to_live(lease) <= 2
    deadline = time.monotonic() + 10
    while await etcd.get(key(request, "member")) is not None:
        assert time.monotonic() < deadline, "the lease's key outlived it"
        await asyncio.sleep(0.2)
    assert await etcd.keepalive(lease) == 0


async def test_a_watch_sees_puts_and_deletes_from_a_revision(
    etcd: Etcd, request: pytest.FixtureRequest
) -> None:
    _, revision = await etcd.range(key(request, ""))
    await etcd.put(key(request, "x"), b"1")
    await etcd.delete(key(request, "x"))
    seen = []
    async for events in etcd.watch(key(request, ""), revision + 1):
        seen += [(e.type, e.kv.key.rsplit("/", 1)[1], e.kv.value) for e in events]
        if len(seen) >= 2:
            break
    assert seen == [("PUT", "x", b"1"), ("DELETE", "x", b"")]


async def test_a_dead_member_is_passed_over_and_none_answering_fails_in_time(endpoint: str) -> None:
    dead = f"http://127.0.0.1:{_port()}"
    client = Etcd([dead, endpoint], timeout_s=2.0)
    try:
        assert await client.put("/test/failover", b"ok") > 0
    finally:
        await client.close()
    nobody = Etcd([dead, f"http://127.0.0.1:{_port()}"], timeout_s=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(EtcdUnavailable, match="no etcd member answered"):
            await nobody.get("/test/failover")
    finally:
        await nobody.close()
    assert time.monotonic() - started < 1.5


async def test_the_mirror_loads_then_follows_changes(etcd: Etcd, request: pytest.FixtureRequest) -> None:
    await etcd.put(key(request, "before"), b"1")
    mirror = Mirror(etcd, key(request, ""))
    heard: list[str] = []
    mirror.listeners.append(
        lambda name, kv: heard.append(f"{name.rsplit('/', 1)[1]}={kv.value if kv else None}")
    )
    mirror.start()
    try:
        await mirror.loaded(10)
        await etcd.put(key(request, "after"), b"2")
        await etcd.delete(key(request, "before"))
        deadline = time.monotonic() + 10
        while len(heard) < 3:
            assert time.monotonic() < deadline, heard
            await asyncio.sleep(0.05)
    finally:
        await mirror.close()
    assert heard == ["before=b'1'", "after=b'2'", "before=None"]
    assert [Path(k).name for k in mirror.items] == ["after"]
