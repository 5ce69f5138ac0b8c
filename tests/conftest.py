"""Puts ``tests/`` on the import path, so that every suite shares ``leaks``; and keeps each
test's reports on its item (``item.rep_call``), so that fixtures can attach a failed test's
console or daemon log."""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
