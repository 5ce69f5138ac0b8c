"""Guest code that writes into the agent's own channel costs only its own sandbox."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from ember import errors
from ember.engine import SandboxState

pytestmark = pytest.mark.integration

# Runs as root in the guest. The port can be open only once (a second open gives
# EBUSY), so it takes PID 1's own descriptor with pidfd_getfd (438 on x86_64).
# Then it writes 1-byte stdout frames for a stream the host never opened, each
# write whole frames and at most 32 KiB (what virtio-console takes in one go).
FLOOD_THE_AGENT_PORT = r"""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
port = next(int(fd) for fd in os.listdir("/proc/1/fd")
            if os.readlink(f"/proc/1/fd/{fd}").startswith("/dev/vport"))
fd = libc.syscall(438, os.pidfd_open(1), port, 0)
if fd < 0:
    raise OSError(ctypes.get_errno(), "pidfd_getfd")
frame = struct.pack(">IBI", 6, 2, 0xDEAD) + b"x"
chunk = memoryview(frame * (32760 // len(frame)))
while True:
    sent = 0
    while sent < len(chunk):
        sent += os.write(fd, chunk[sent:])
"""


async def test_a_guest_flooding_its_agent_channel_dies_alone_with_a_protocol_error(sandbox_factory, manager):
    hostile, bystander = await asyncio.gather(sandbox_factory(), sandbox_factory())
    before = [await _run_code_seconds(bystander) for _ in range(5)]
    pid = hostile.vm.pid
    started = time.perf_counter()
    flood = asyncio.create_task(hostile.commands.run(["python3", "-c", FLOOD_THE_AGENT_PORT], timeout_s=120))
    during = []
    while not flood.done() and time.perf_counter() - started < 60:
        during.append(await _run_code_seconds(bystander))
    with pytest.raises(errors.ProtocolError) as caught:
        await asyncio.wait_for(flood, 30)
    failed_after_s = time.perf_counter() - started
    assert caught.value.code == "protocol_error"
    assert "the guest broke the agent protocol" in caught.value.message

    assert hostile.state is SandboxState.DEAD
    reason = hostile.end_reason
    assert reason.startswith("the guest broke the agent protocol: ")
    assert "no call waiting" in reason
    with pytest.raises(errors.SandboxDeadError, match="broke the agent protocol"):
        await hostile.commands.run("true")

    # The reaper ends a dead sandbox's VM (the daemon runs it every second).
    await manager.reaper.reap()
    await asyncio.wait_for(hostile.vm.wait_exit(), 30)
    assert pid is not None and (not Path(f"/proc/{pid}").exists() or _is_zombie(pid))
    assert not hostile.vm.spec.run_dir.exists()

    after = [await _run_code_seconds(bystander) for _ in range(5)]
    print(
        f"\nflood failed the call after {failed_after_s:.2f} s: {reason}"
        f"\nbystander run_code p50: before {statistics.median(before) * 1e3:.0f} ms, "
        f"during {statistics.median(during) * 1e3 if during else float('nan'):.0f} ms ({len(during)} runs), "
        f"after {statistics.median(after) * 1e3:.0f} ms"
    )
    assert bystander.state is SandboxState.RUNNING


async def _run_code_seconds(sandbox) -> float:
    started = time.perf_counter()
    execution = await sandbox.code.run("print(6 * 7)")
    assert execution.stdout == "42\n"
    return time.perf_counter() - started


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
