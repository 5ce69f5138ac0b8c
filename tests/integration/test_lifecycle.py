"""Boot, death and teardown of real microVMs, and the agent channel under bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import replace

import pytest

from ember import errors
from ember.engine import SandboxManager, SandboxState
from ember.protocol.framing import (
    AGENT_SYNC_MAGIC,
    HEADER,
    HOST_SYNC_MAGIC,
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameKind,
    encode_frame,
    encode_message,
)

pytestmark = pytest.mark.integration


async def test_sandbox_boots_with_the_requested_shape(sandbox_factory):
    sandbox = await sandbox_factory(vcpus=2, memory_mb=256)
    assert sandbox.state is SandboxState.RUNNING
    result = await sandbox.commands.run("nproc; awk '/MemTotal/ {print $2}' /proc/meminfo; hostname")
    cpus, mem_kib, hostname = result.stdout.split()
    assert cpus == "2"
    assert 200 * 1024 < int(mem_kib) <= 256 * 1024
    assert hostname == sandbox.hostname
    assert sandbox.agent_info is not None and sandbox.agent_info.python.startswith("3.11")
    print(f"\ncold boot to agent ready: {sandbox.boot_seconds:.2f} s")


async def test_a_booted_sandbox_answers_once_its_interpreter_has_started(sandbox_factory):
    # Its Python REPL then sits idle, so a snapshot of it (a template, a fork) is
    # warm: restores do not redo the interpreter's start-up (~1 s of CPU under TCG).
    sandbox = await sandbox_factory(vcpus=1, memory_mb=384)
    # utime and stime of the REPL worker, read with bash builtins only (quick, and
    # no process of its own); 'repl_worke[r]' keeps this shell out of the match.
    script = (
        "for p in /proc/[0-9]*; do mapfile -d '' argv < $p/cmdline; "
        "[[ ${argv[*]} =~ repl_worke[r] ]] && read -ra stat < $p/stat && echo ${stat[13]} ${stat[14]}; done"
    )
    first = (await sandbox.commands.run(script)).stdout
    await asyncio.sleep(1)
    assert first.strip() and (await sandbox.commands.run(script)).stdout == first
    assert (await sandbox.code.run("1 + 1")).results[0].data["text/plain"] == "2"


async def test_guest_keeps_time_with_the_tsc(sandbox_factory, manager):
    # Under TCG the kernel is told the host's TSC rate: a guest booted on a busy
    # host would otherwise fall back to jiffies and its clock would drift.
    sandbox = await sandbox_factory()
    clocksource = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
    source = await sandbox.commands.run(f"cat {clocksource}")
    expected = {"tsc"} if manager.driver.accel.kind == "tcg" else {"kvm-clock", "tsc"}
    assert source.stdout.strip() in expected
    if manager.driver.tsc_khz:
        cmdline = (await sandbox.files.read("/proc/cmdline")).decode()
        assert f"tsc_early_khz={manager.driver.tsc_khz}" in cmdline
    host_before = time.time()
    guest = float((await sandbox.commands.run("date +%s.%N")).stdout)
    assert host_before - 1 < guest < time.time() + 1


async def test_address_space_randomisation_is_off_only_under_tcg(shared_sandbox, manager):
    # Under TCG every exec at new addresses is translated afresh (ember.vmm.qemu).
    setting = (await shared_sandbox.files.read("/proc/sys/kernel/randomize_va_space")).decode().strip()
    assert setting == ("0" if manager.driver.accel.kind == "tcg" else "2")
    assert (await shared_sandbox.commands.run("true")).exit_code == 0


async def test_root_is_an_overlay_on_a_read_only_base(sandbox_factory):
    sandbox = await sandbox_factory()
    mounts = (await sandbox.commands.run("cat /proc/mounts")).stdout
    assert "overlay / overlay" in mounts
    assert "/dev/vdb" in mounts
    base = await sandbox.commands.run("touch /oldroot/x")
    assert base.exit_code != 0 and "Read-only" in base.stderr


async def test_guest_has_the_promised_tools(sandbox_factory):
    """What the README says a sandbox has without installing anything (debian_tree's groups)."""
    sandbox = await sandbox_factory()
    tools = (
        "python3 pip3 node npm git curl wget tar gzip bzip2 xz zstd zip unzip ps ip bash ssh rsync nc "
        "jq sqlite3 rg file less patch bc lsof gcc g++ make pkg-config ffmpeg convert pdftotext pdftoppm"
    )
    result = await sandbox.commands.run(
        f"for t in {tools}; do command -v $t >/dev/null || echo missing $t; done"
    )
    assert result.stdout == ""
    # A venv (pip's own install into it is ensurepip's, slow under TCG and not ours to test),
    # and a C extension's build: the compiler finds Python's headers.
    build = await sandbox.commands.run(
        "python3 -m venv --without-pip /tmp/venv && /tmp/venv/bin/python -c 'print(1)' && "
        "printf '#include <Python.h>\\nint main(void){return PY_MAJOR_VERSION != 3;}\\n' > /tmp/x.c && "
        "gcc $(python3-config --includes) -o /tmp/x /tmp/x.c && /tmp/x && echo built",
        timeout_s=300,
    )
    assert build.stdout == "1\nbuilt\n", build.stderr


async def test_files_written_by_one_sandbox_are_invisible_to_another(sandbox_factory):
    first, second = await asyncio.gather(sandbox_factory(), sandbox_factory())
    await first.files.write("/app/mine.txt", b"first")
    assert not await second.files.exists("/app/mine.txt")


async def test_a_guest_that_dies_marks_the_sandbox_dead_with_its_console(sandbox_factory):
    sandbox = await sandbox_factory()
    # LINUX_REBOOT_CMD_RESTART: the kernel restarts and QEMU (-no-reboot) exits.
    with pytest.raises((errors.SandboxDeadError, errors.AgentUnavailableError)):
        await sandbox.code.run("import ctypes; ctypes.CDLL(None).reboot(0x01234567)", timeout_s=30)
    await asyncio.wait_for(sandbox.vm.wait_exit(), 30)
    assert sandbox.state is SandboxState.DEAD
    assert "exited unexpectedly" in sandbox.end_reason
    assert "reboot" in sandbox.end_reason.lower()
    with pytest.raises(errors.SandboxDeadError):
        await sandbox.commands.run("true")


async def test_boot_failure_reports_the_kernel_panic(manager, test_settings, tmp_path):
    garbage = tmp_path / "not-a-filesystem.img"
    garbage.write_bytes(b"\0" * (8 << 20))
    broken = SandboxManager(test_settings)
    broken._images = replace(manager.images, rootfs=garbage)
    with pytest.raises(errors.BootFailedError) as caught:
        await broken.create(vcpus=1, memory_mb=256)
    assert "Kernel panic" in str(caught.value)
    assert broken.list(include_ended=True) == []
    assert list(test_settings.run_dir.iterdir()) == [] or all(
        p.name in {s.id for s in manager.list(include_ended=True)} for p in test_settings.run_dir.iterdir()
    )


async def test_invalid_shapes_create_nothing(manager, test_settings):
    before = set(test_settings.run_dir.iterdir())
    for kwargs in ({"vcpus": 0}, {"memory_mb": 64}, {"memory_mb": 8192 * 4}, {"env": {"A B": "x"}}):
        with pytest.raises(errors.InvalidRequestError):
            await manager.create(**kwargs)
    assert set(test_settings.run_dir.iterdir()) == before


def _raw_agent_exchange(path: str, payload: bytes) -> list:
    """Connect to the agent socket directly, sync (retrying as the engine does), send raw bytes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        received = b""
        for attempt in range(10):
            nonce = bytes([attempt]) * 16
            sock.sendall(HOST_SYNC_MAGIC + nonce)
            sock.settimeout(1)
            try:
                while AGENT_SYNC_MAGIC + nonce not in received:
                    received += sock.recv(65536)
                break
            except TimeoutError:
                continue
        received = received.split(AGENT_SYNC_MAGIC + nonce, 1)[1]
        sock.settimeout(10)
        sock.sendall(payload)
        decoder = FrameDecoder()
        frames = decoder.feed(received)
        while not frames:
            frames = decoder.feed(sock.recv(65536))
        return frames


async def test_malformed_and_oversized_frames_get_protocol_errors_and_the_agent_lives_on(sandbox_factory):
    sandbox = await sandbox_factory()
    await sandbox._agent.close()
    path = str(sandbox.vm.agent_socket)
    bad_json = encode_frame(FrameKind.MESSAGE, 5, b"{not json")
    (reply,) = await asyncio.to_thread(_raw_agent_exchange, path, bad_json)
    assert reply.stream_id == 5 and json.loads(reply.payload)["code"] == "protocol_error"
    unknown = encode_message(6, {"op": "launch_missiles"})
    (reply,) = await asyncio.to_thread(_raw_agent_exchange, path, unknown)
    assert json.loads(reply.payload)["code"] == "unknown_operation"
    oversized = HEADER.pack(MAX_FRAME_BYTES + 10, FrameKind.MESSAGE, 7)
    (reply,) = await asyncio.to_thread(_raw_agent_exchange, path, oversized)
    assert reply.stream_id == 0 and json.loads(reply.payload)["code"] == "protocol_error"
    wrong_types = encode_message(8, {"op": "exec", "cmd": ["not", "a", "string"]})
    (reply,) = await asyncio.to_thread(_raw_agent_exchange, path, wrong_types)
    assert json.loads(reply.payload)["code"] == "invalid_request"
    await sandbox.reconnect()
    assert (await sandbox.commands.run("echo alive")).stdout == "alive\n"


async def test_destroy_is_idempotent_and_fast(sandbox_factory, manager):
    sandbox = await sandbox_factory()
    pid = sandbox.vm.pid
    await manager.destroy(sandbox.id)
    await sandbox.destroy()
    with pytest.raises(errors.SandboxNotFoundError):
        manager.get(sandbox.id)
    assert not sandbox.vm.spec.run_dir.exists()
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
