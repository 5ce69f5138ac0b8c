"""The processes behind the SDK's ``exec_command`` / ``write_stdin`` tools.

With ``tty=True`` a process runs on an Ember terminal (the PTY WebSocket), so the
model can type into it; otherwise it is a background command with stdin closed,
as on the SDK's other backends, so a program waiting for input sees end-of-file
instead of hanging. Either way its output collects in one queue that the SDK's
``collect_pty_output`` drains, and a waiter task records the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from agents.sandbox.errors import PtySessionNotFoundError
from agents.sandbox.session.pty_output import collect_pty_output
from agents.sandbox.session.pty_types import (
    PTY_PROCESSES_MAX,
    PtyExecUpdate,
    allocate_pty_process_id,
    process_id_to_prune_from_meta,
)

from ember import errors
from ember.client import AsyncCommandHandle, AsyncSandbox, AsyncTerminal

logger = logging.getLogger(__name__)

#: How long a killed process's waiter may take to see the exit before it is cancelled.
_REAP_GRACE_S = 5.0


@dataclass
class Process:
    """One process the model started: its output queue, its exit and how to end it."""

    terminal: AsyncTerminal | None = None
    handle: AsyncCommandHandle | None = None
    chunks: deque[bytes] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    notify: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    last_used: float = field(default_factory=time.monotonic)
    waiter: asyncio.Task[None] | None = None

    def append(self, data: bytes | str) -> None:
        self.chunks.append(data.encode() if isinstance(data, str) else data)
        self.notify.set()

    async def collect(
        self, yield_time_ms: int, max_output_tokens: int | None
    ) -> tuple[bytes, int | None, bool]:
        self.last_used = time.monotonic()
        return await collect_pty_output(
            output_chunks=self.chunks,
            output_lock=self.lock,
            output_notify=self.notify,
            is_done=self.closed.is_set,
            yield_time_ms=yield_time_ms,
            max_output_tokens=max_output_tokens,
        )

    async def write(self, chars: str) -> None:
        if self.terminal is None:
            raise RuntimeError("stdin is not available for this process: start it with tty=true")
        await self.terminal.send(chars)

    async def terminate(self) -> None:
        """Kill the process if it still runs, release its connection and reap the waiter.

        The kill (and, for a terminal, closing its WebSocket) is what ends the waiter;
        it is cancelled only if it hangs on, since cancelling a terminal's wait would
        cancel the terminal's reader with it.
        """
        if not self.closed.is_set():
            with contextlib.suppress(errors.EmberError):
                await (self.terminal or self.handle).kill()  # type: ignore[union-attr]
        if self.terminal is not None:
            await self.terminal.close()
        if self.waiter is not None:
            await asyncio.wait({self.waiter}, timeout=_REAP_GRACE_S)
            if not self.waiter.done():
                self.waiter.cancel()
                await asyncio.gather(self.waiter, return_exceptions=True)

    async def _wait(self, timeout_s: float | None) -> None:
        try:
            if self.terminal is not None:
                self.exit_code = await self._wait_terminal(self.terminal, timeout_s)
            else:
                assert self.handle is not None
                result = await self.handle.wait(on_stdout=self.append, on_stderr=self.append)
                self.exit_code = result.exit_code if result.signal is None else 128 + result.signal
        except errors.EmberError as exc:
            # The process is lost to us (sandbox ended, daemon gone, terminal closed): it is over.
            logger.info("an interactive process in the Ember sandbox ended without an exit code: %s", exc)
            self.append(f"\n[lost: {exc}]\n")
        self.closed.set()
        self.notify.set()

    async def _wait_terminal(self, terminal: AsyncTerminal, timeout_s: float | None) -> int:
        """The terminal's exit code; past `timeout_s` (Ember terminals have no limit) it is killed."""
        exiting = asyncio.ensure_future(terminal.wait())
        await asyncio.wait({exiting}, timeout=timeout_s)
        if not exiting.done():
            self.append(f"\n[killed: ran longer than {timeout_s} s]\n")
            await terminal.kill()
        return await exiting


async def start(
    sandbox: AsyncSandbox,
    cmd: str,
    *,
    tty: bool,
    env: dict[str, str],
    cwd: str,
    user: str | None,
    timeout_s: float | None,
) -> Process:
    """Start `cmd` (run by bash) on a terminal or as a background command."""
    process = Process()
    if tty:
        process.terminal = await sandbox.pty.create(cmd, env=env, cwd=cwd, user=user, on_data=process.append)
    else:
        process.handle = await sandbox.commands.run(
            cmd, env=env, cwd=cwd, user=user, timeout=timeout_s, background=True
        )
    process.waiter = asyncio.create_task(process._wait(timeout_s if tty else None))
    return process


class ProcessTable:
    """The session's live processes by the ids the model sees; the session awaits ``close()``."""

    def __init__(self) -> None:
        self._processes: dict[int, Process] = {}
        self._lock = asyncio.Lock()

    async def add(self, process: Process) -> int:
        """Register `process` under a new id, ending the least useful one when the table is full."""
        async with self._lock:
            pruned = None
            if len(self._processes) >= PTY_PROCESSES_MAX:
                meta = [(pid, p.last_used, p.closed.is_set()) for pid, p in self._processes.items()]
                victim = process_id_to_prune_from_meta(meta)
                pruned = self._processes.pop(victim) if victim is not None else None
            process_id = allocate_pty_process_id(set(self._processes))
            self._processes[process_id] = process
        if pruned is not None:
            await pruned.terminate()
        return process_id

    def get(self, process_id: int) -> Process | None:
        return self._processes.get(process_id)

    async def update(
        self, process_id: int, yield_time_ms: int, max_output_tokens: int | None
    ) -> PtyExecUpdate:
        """Output gathered for up to `yield_time_ms`; an ended process leaves the table."""
        process = self._processes.get(process_id)
        if process is None:  # it ended and left the table meanwhile
            raise PtySessionNotFoundError(session_id=process_id)
        output, original_token_count, closed = await process.collect(yield_time_ms, max_output_tokens)
        live_id: int | None = process_id
        exit_code = None
        if closed:
            exit_code = process.exit_code
            async with self._lock:
                self._processes.pop(process_id, None)
            await process.terminate()
            live_id = None
        return PtyExecUpdate(
            process_id=live_id, output=output, exit_code=exit_code, original_token_count=original_token_count
        )

    async def close(self) -> None:
        async with self._lock:
            processes = list(self._processes.values())
            self._processes.clear()
        for process in processes:
            await process.terminate()
