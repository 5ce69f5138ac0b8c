"""Host-wide uid claims for jailed VMMs: one holder per uid, released by its own instance."""

from __future__ import annotations

import pytest

from ember.errors import ResourceExhaustedError
from ember.settings import parse_range
from ember.vmm.uids import UidRange


def test_claims_are_distinct_across_daemons_and_come_back_when_released(tmp_path):
    ours, theirs = UidRange(1000, 1002, "aaaaaa", tmp_path), UidRange(1000, 1002, "bbbbbb", tmp_path)
    assert [ours.claim("s1"), theirs.claim("t1"), ours.claim("s2")] == [1000, 1001, 1002]
    with pytest.raises(ResourceExhaustedError, match="EMBER_UID_RANGE"):
        theirs.claim("t2")
    assert ours.holders() == {1000: "s1", 1002: "s2"}
    ours.release(1001)  # theirs: not ours to release
    assert theirs.holders() == {1001: "t1"}
    ours.release(1000)
    assert theirs.claim("t2") == 1000
    ours.release(1000)  # idempotent, and still not ours
    assert theirs.holders() == {1000: "t2", 1001: "t1"}


def test_a_range_is_parsed_and_checked():
    assert parse_range("EMBER_UID_RANGE", "200000-265535") == (200_000, 265_535)
    for bad in ("0-10", "10-5", "abc", "5", "-5-6"):
        with pytest.raises(ValueError, match="EMBER_UID_RANGE"):
            parse_range("EMBER_UID_RANGE", bad)
