"""The daemon's background work on memory images waits for the VMs starting, and an image's
last close happens off the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from ember.vmm import memory
from ember.vmm.memory import Background, VmStarts, close_when_done, new_image


def test_background_work_waits_until_no_vm_is_starting():
    starts, ran = VmStarts(), threading.Event()
    background = Background("test-background", starts)
    try:
        with starts.starting(), starts.starting():
            background.submit(ran.set)
            assert not ran.wait(0.2), "a job ran while VMs were starting"
        assert ran.wait(5), "the job did not run once none was"
    finally:
        background.shutdown()


def test_background_work_runs_at_last_when_vms_keep_starting(monkeypatch):
    monkeypatch.setattr(memory, "BACKGROUND_WAIT_S", 0.2)
    starts = VmStarts()
    background = Background("test-background", starts)
    try:
        with starts.starting():
            started = time.monotonic()
            assert background.submit(lambda: 42).result(timeout=5) == 42
            assert time.monotonic() - started >= 0.2
    finally:
        background.shutdown()


async def test_an_image_is_closed_off_the_event_loop():
    image = new_image(1 << 20, "test")
    closed_by = []
    real_close = os.close

    def close(fd: int) -> None:
        if fd == image:
            closed_by.append(threading.current_thread())
        real_close(fd)

    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(image)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "close", close)
        close_when_done(done)
        for _ in range(100):
            if closed_by:
                break
            await asyncio.sleep(0.01)
    assert closed_by and closed_by[0] is not threading.current_thread()
