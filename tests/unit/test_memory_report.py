"""The daemon's memory report: off unless asked for, and then written whole at SIGUSR2."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from ember.server import memory_report


def test_without_the_variable_nothing_is_installed(monkeypatch):
    monkeypatch.delenv(memory_report.DIRECTORY_ENV, raising=False)
    before = signal.getsignal(signal.SIGUSR2)
    memory_report.install()
    assert signal.getsignal(signal.SIGUSR2) is before


def test_a_sigusr2_writes_the_report_the_variable_asks_for(monkeypatch, tmp_path):
    monkeypatch.setenv(memory_report.DIRECTORY_ENV, str(tmp_path))
    monkeypatch.delenv(memory_report.TRACE_ENV, raising=False)
    _install_and_signal(lambda: (tmp_path / memory_report.REPORT).exists())
    report = json.loads((tmp_path / memory_report.REPORT).read_text())
    assert sorted(os.listdir(tmp_path)) == [memory_report.REPORT], "no partial file is left"
    assert report["rss_kib"] > 1024
    assert report["malloc_in_use_bytes"] > 0 and report["malloc_free_bytes"] >= 0
    assert report["sqlite_bytes"] is None or report["sqlite_bytes"] >= 0
    assert report["types"]["builtins.dict"] > 0 and report["loggers"] > 0
    assert "MainThread" in report["threads"]
    assert report["tasks"] is None  # no event loop runs here
    assert report["traced_bytes"] is None


def test_the_report_counts_objects_that_are_kept():
    class Kept:
        pass

    name = f"{Kept.__module__}.{Kept.__qualname__}"
    before = memory_report.report()["types"].get(name, 0)
    kept = [Kept() for _ in range(100)]
    assert memory_report.report()["types"][name] == before + len(kept)


def test_sqlite_s_page_cache_is_counted(tmp_path):
    import sqlite3

    before = memory_report.report()["sqlite_bytes"]
    if before is None:
        pytest.skip("this Python's sqlite3 is not the system's shared SQLite library")
    database = sqlite3.connect(tmp_path / "state.db")
    try:
        database.execute("CREATE TABLE t (x TEXT)")
        database.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 1000)
        during = memory_report.report()["sqlite_bytes"]
    finally:
        database.close()
    assert during - before > 512 * 1024, "a megabyte written through the page cache"


def test_a_report_that_cannot_be_written_is_logged_not_raised_into_the_daemon(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(memory_report.DIRECTORY_ENV, str(tmp_path / "gone"))
    monkeypatch.delenv(memory_report.TRACE_ENV, raising=False)
    _install_and_signal(lambda: "writing the memory report" in caplog.text)
    assert "writing the memory report" in caplog.text


def _install_and_signal(done: Callable[[], bool]) -> None:
    """``install()``, send this process SIGUSR2 and wait (10 s at most) for ``done``; the
    handler that was there before is put back."""
    before = signal.getsignal(signal.SIGUSR2)
    try:
        memory_report.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs between two bytecodes of this thread
    finally:
        signal.signal(signal.SIGUSR2, before)
