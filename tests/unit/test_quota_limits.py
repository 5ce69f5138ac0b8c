"""Quotas: limits merged from a key's own and the default, checks, reservations, lifetimes."""

from __future__ import annotations

import pytest

from ember import errors
from ember.engine.quotas import Quota, Quotas, Usage


def quotas(quota: Quota, held: Usage | None = None) -> Quotas:
    return Quotas(lambda owner: quota, lambda owner: held or Usage())


def test_a_key_names_some_limits_and_follows_the_default_for_the_rest():
    default = Quota(sandboxes=10, vcpus=20, lifetime_s=3600)
    merged = default.under({"sandboxes": 2, "lifetime_s": None})
    assert merged == Quota(sandboxes=2, vcpus=20, lifetime_s=None)


@pytest.mark.parametrize(
    "values",
    [
        {"sandbox": 1},
        {"sandboxes": -1},
        {"vcpus": 1.5},
        {"memory_mb": "512"},
        {"snapshots": True},
        {"lifetime_s": 0},
    ],
)
def test_bad_limits_are_invalid_requests(values):
    with pytest.raises(errors.InvalidRequestError):
        Quota.from_dict(values)


def test_a_request_over_a_limit_says_which_limit_and_the_use():
    checker = quotas(Quota(vcpus=4), held=Usage(sandboxes=1, vcpus=3))
    checker.check("key", Usage(sandboxes=1, vcpus=1))
    with pytest.raises(errors.QuotaExceededError) as raised:
        checker.check("key", Usage(sandboxes=1, vcpus=2))
    assert raised.value.code == "quota_exceeded" and raised.value.status == 429
    assert raised.value.details == {"quota": "vcpus", "limit": 4, "used": 3, "requested": 2}


def test_what_a_request_does_not_add_is_not_checked_even_when_over():
    # A key whose default was lowered below what it holds may still take snapshots.
    quotas(Quota(sandboxes=1), held=Usage(sandboxes=3)).check("key", Usage(snapshots=1))


def test_the_engine_itself_is_never_limited():
    quotas(Quota(sandboxes=0)).check(None, Usage(sandboxes=5))


def test_creates_in_flight_count_until_their_sandbox_does():
    checker = quotas(Quota(sandboxes=2))
    with checker.reserve("key", Usage(sandboxes=1)), checker.reserve("key", Usage(sandboxes=1)) as second:
        with pytest.raises(errors.QuotaExceededError):
            checker.check("key", Usage(sandboxes=1))
        second.release()
        checker.check("key", Usage(sandboxes=1))
        second.release()  # twice is once
        assert checker.usage("key") == Usage(sandboxes=1)
    assert checker.usage("key") == Usage()


def test_a_renewed_reservation_is_checked_again():
    held = Usage()
    checker = Quotas(lambda owner: Quota(sandboxes=1), lambda owner: held)
    with checker.reserve("key", Usage(sandboxes=1)) as reservation:
        reservation.release()
        held = Usage(sandboxes=1)  # another create took the place meanwhile
        with pytest.raises(errors.QuotaExceededError):
            reservation.renew()
    assert checker.usage("key") == Usage(sandboxes=1)


def test_a_refused_reservation_holds_nothing():
    checker = quotas(Quota(memory_mb=512))
    with pytest.raises(errors.QuotaExceededError), checker.reserve("key", Usage(memory_mb=1024)):
        pass
    assert checker.usage("key") == Usage()


def test_a_lifetime_is_given_when_none_is_asked_and_refused_when_too_long():
    checker = quotas(Quota(lifetime_s=600))
    assert checker.lifetime("key", None) == 600
    assert checker.lifetime("key", 60) == 60
    assert checker.lifetime("key", None, age_s=500) == 100
    with pytest.raises(errors.QuotaExceededError, match="limit of 600 s") as raised:
        checker.lifetime("key", 200, age_s=500)
    assert raised.value.details["quota"] == "lifetime_s"
    assert quotas(Quota()).lifetime("key", None) is None
