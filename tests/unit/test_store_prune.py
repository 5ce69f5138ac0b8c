"""The state store forgets ended sandboxes a week after their end, never live ones."""

from __future__ import annotations

from ember.engine.store import ENDED_KEPT_S, SandboxRecord, Store


def test_sandboxes_ended_over_a_week_ago_are_forgotten_and_the_rest_kept(tmp_path):
    now = 2_000_000_000.0
    store = Store(tmp_path / "ember.db")
    try:
        for sandbox_id, state, ended_at in (
            ("ended-long-ago", "stopped", now - ENDED_KEPT_S - 1),
            ("died-long-ago", "dead", now - ENDED_KEPT_S - 60),
            ("ended-yesterday", "stopped", now - 86_400),
            ("running-for-weeks", "running", None),
        ):
            store.save(SandboxRecord(sandbox_id, None, state, 2, 512, 4096, created_at=now - 30 * 86_400,
                                     ended_at=ended_at))  # fmt: skip
        assert store.prune(now) == 2
        assert sorted(r.id for r in store.list(live_only=False)) == ["ended-yesterday", "running-for-weeks"]
    finally:
        store.close()
