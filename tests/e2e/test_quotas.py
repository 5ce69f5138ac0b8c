"""Quotas per API key, through the SDK and the CLI: each limit refuses with quota_exceeded, says
what was exceeded and the use, and leaves what the key already has running as it was."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_support import Daemon, run_cli

from ember import QuotaExceededError, Sandbox
from ember.client import CreatedKey, Keys


@pytest.fixture
def limited(daemon: Daemon) -> Iterator[CreatedKey]:
    """A key of its own; its sandboxes and snapshots go, and it is revoked, after the test."""
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        key = keys.create("e2e-quota")
    yield key
    for info in Sandbox.list(base_url=daemon.url, api_key=key.key):
        Sandbox.connect(info.id, base_url=daemon.url, api_key=key.key).kill()
    for snapshot in Sandbox.list_snapshots(base_url=daemon.url, api_key=key.key):
        Sandbox.delete_snapshot(snapshot.id, base_url=daemon.url, api_key=key.key)
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        keys.revoke(key.id)


def open_sandbox(daemon: Daemon, key: CreatedKey, **kwargs: object) -> Sandbox:
    shape = {"vcpus": 2, "memory_mb": 512, **kwargs}  # template base's shape: a restore, not a boot
    return Sandbox(base_url=daemon.url, api_key=key.key, **shape)  # type: ignore[arg-type]


def test_running_sandboxes_vcpus_and_forks_are_limited_per_key(daemon: Daemon, limited: CreatedKey) -> None:
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        keys.set_quota(limited.id, {"sandboxes": 2, "vcpus": 3})
    first = open_sandbox(daemon, limited, timeout=600)
    first.run_code("x = 41")
    with pytest.raises(QuotaExceededError) as raised:
        open_sandbox(daemon, limited, timeout=600)  # 2 more vCPUs: 4 of 3
    assert raised.value.details == {"quota": "vcpus", "limit": 3, "used": 2, "requested": 2}
    assert "vcpus" in raised.value.message and "ember keys quota" in raised.value.message
    with pytest.raises(QuotaExceededError, match="sandboxes"):
        first.fork(2)
    # Nothing was made, and what ran runs on.
    assert [s.id for s in Sandbox.list(base_url=daemon.url, api_key=limited.key)] == [first.id]
    assert first.run_code("print(x + 1)").stdout == "42\n"
    # The admin's own key is not held to this one's quota.
    with open_sandbox(daemon, CreatedKey(id="", name="admin", key=daemon.api_key), timeout=600) as other:
        assert other.run_code("print(1)").stdout == "1\n"
    first.kill()
    second = open_sandbox(daemon, limited, vcpus=1, memory_mb=256, timeout=600)
    third = open_sandbox(daemon, limited, vcpus=1, memory_mb=256, timeout=600)
    with pytest.raises(QuotaExceededError, match="sandboxes would be 3"):
        second.fork(1)
    second.kill()
    third.kill()


def test_concurrent_creates_never_pass_a_limit_together(daemon: Daemon, limited: CreatedKey) -> None:
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        keys.set_quota(limited.id, {"sandboxes": 2})

    def create(_: int) -> Sandbox | QuotaExceededError:
        try:
            return open_sandbox(daemon, limited, vcpus=1, memory_mb=256, timeout=600)
        except QuotaExceededError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(create, range(4)))
    made = [o for o in outcomes if isinstance(o, Sandbox)]
    assert len(made) == 2, outcomes
    assert all(isinstance(o, QuotaExceededError) for o in outcomes if o not in made)
    for sandbox in made:
        sandbox.kill()


def test_a_lifetime_limit_gives_sandboxes_without_one_a_lifetime(daemon: Daemon, limited: CreatedKey) -> None:
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        keys.set_quota(limited.id, {"lifetime_s": 300})
    with pytest.raises(QuotaExceededError, match="limit of 300 s"):
        open_sandbox(daemon, limited, timeout=900)
    sandbox = open_sandbox(daemon, limited, timeout=None)  # "never expires" is not for this key
    info = sandbox.info()
    assert info.expires_at is not None and 295 <= info.expires_at - info.created_at <= 300
    with pytest.raises(QuotaExceededError, match="lifetime"):
        sandbox.set_timeout(600)
    assert sandbox.info().expires_at == info.expires_at
    unlimited = sandbox.set_timeout(None)  # as at create: all the lifetime the key allows
    assert unlimited.expires_at is not None and abs(unlimited.expires_at - info.expires_at) < 1
    sandbox.set_timeout(60)
    sandbox.kill()


def test_snapshots_are_limited_by_count_and_bytes(daemon: Daemon, limited: CreatedKey) -> None:
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        keys.set_quota(limited.id, {"snapshots": 1})
    sandbox = open_sandbox(daemon, limited, timeout=600)
    kept = sandbox.snapshot()
    with pytest.raises(QuotaExceededError, match="snapshots") as raised:
        sandbox.snapshot()
    assert raised.value.details["used"] == 1
    assert [s.id for s in Sandbox.list_snapshots(base_url=daemon.url, api_key=limited.key)] == [kept.id]
    with Keys(base_url=daemon.url, api_key=daemon.api_key) as keys:
        used = keys.quota(limited.id).usage.snapshot_bytes
        assert used == kept.size_bytes > 0
        keys.set_quota(limited.id, {"snapshot_bytes": used})
    with pytest.raises(QuotaExceededError, match="snapshot_bytes"):
        sandbox.snapshot()
    Sandbox.delete_snapshot(kept.id, base_url=daemon.url, api_key=limited.key)
    sandbox.snapshot()  # room again
    sandbox.kill()


def test_ember_keys_quota_shows_and_sets_limits_and_the_default(daemon: Daemon, limited: CreatedKey) -> None:
    changed = run_cli(daemon, "keys", "quota", limited.id, "--sandboxes", "3", "--lifetime-s", "none")
    assert changed.returncode == 0, changed.stderr
    defaults = run_cli(daemon, "keys", "quota", "--default", "--memory-mb", "4096")
    try:
        assert defaults.returncode == 0, defaults.stderr
        assert "memory_mb       4096" in defaults.stdout
        shown = run_cli(daemon, "keys", "quota", env={"EMBER_API_KEY": limited.key})  # its own, no admin
        assert shown.returncode == 0, shown.stderr
        rows = quota_rows(shown.stdout)
        assert rows["sandboxes"] == ["3", "3", "0"]
        assert rows["memory_mb"] == ["4096", "default", "0"]
        assert rows["lifetime_s"] == ["none", "none", "-"]
        back = run_cli(daemon, "keys", "quota", limited.id, "--sandboxes", "default")
        assert back.returncode == 0, back.stderr
        assert quota_rows(back.stdout)["sandboxes"] == ["none", "default", "0"]
        bad = run_cli(daemon, "keys", "quota", limited.id, "--vcpus", "lots")
        assert bad.returncode != 0 and "--vcpus takes" in bad.stderr
        as_itself = {"EMBER_API_KEY": limited.key}
        forbidden = run_cli(daemon, "keys", "quota", limited.id, "--vcpus", "1", env=as_itself)
        assert forbidden.returncode != 0 and "permission_denied" in forbidden.stderr
    finally:
        run_cli(daemon, "keys", "quota", "--default", "--memory-mb", "none")


def quota_rows(table: str) -> dict[str, list[str]]:
    """``ember keys quota``'s table: limit name -> in force, own, used."""
    lines = table.splitlines()
    assert lines[0].startswith("key ") and lines[1].split() == ["LIMIT", "IN", "FORCE", "OWN", "USED"]
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}
