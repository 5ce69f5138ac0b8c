"""REPL contexts: persistent Python interpreters and bash shells that run code cells.

Each context is a child process the agent drives over two pipes (requests in,
one reply line out per cell) while its stdout and stderr stream through the
process table like any command's. A cell ends when the reply has arrived and the
per-cell marker has come through both output pipes, so no output of one cell can
leak into the next. A context that dies or hangs past its timeout is replaced by
a fresh one, and the cell's result says so.

A Python interpreter says when it has finished starting (one line on the reply
pipe, before any cell): under TCG its imports take about a second of CPU, and a
snapshot taken before then would make every restore of it redo that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import time
import uuid
from pathlib import Path

from ember.agent._errors import AgentError
from ember.agent._fdio import wait_readable, wait_writable
from ember.agent.buffers import MarkerFilter
from ember.agent.paths import STATE_DIR, WORKDIR
from ember.agent.processes import ManagedProcess, ProcessTable, Sender, stream_output
from ember.protocol.codes import ErrorCode
from ember.protocol.messages import ContextInfo, Execution, ExecutionError, RichResult

_WORKER = Path(__file__).with_name("repl_worker.py")
_BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__ember_worker__')"
# After SIGINT, how long a Python cell gets to unwind before the REPL counts as wedged.
_INTERRUPT_GRACE_S = 2.0
LANGUAGES = ("python", "bash")


class _LineReader:
    """Reads newline-terminated replies from a non-blocking pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        os.set_blocking(fd, False)

    async def readline(self) -> bytes:
        while b"\n" not in self._buffer:
            await wait_readable(self._fd)
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise EOFError
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class ReplContext:
    """One persistent interpreter; cells run one at a time."""

    def __init__(self, table: ProcessTable, context_id: str, language: str, cwd: str) -> None:
        if language not in LANGUAGES:
            raise AgentError(ErrorCode.INVALID_REQUEST, f"language must be one of {LANGUAGES}")
        self.context_id = context_id
        self.language = language
        self.cwd = cwd
        self._table = table
        self._lock = asyncio.Lock()
        self._process: ManagedProcess | None = None
        self._requests_fd = -1
        self._child_reply_fd = -1
        self._replies: _LineReader | None = None
        self._env_updates: dict[str, str] = {}
        self._reseed = False
        self._starting = False  # a Python worker's "started" line is still to be read

    def info(self) -> ContextInfo:
        return ContextInfo(context_id=self.context_id, language=self.language, cwd=self.cwd)

    @property
    def _state_file(self) -> Path:
        return STATE_DIR / f"{self.context_id}.state"

    def start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        try:
            if self.language == "python":
                python = self._table.which("python3")
                if python is None:
                    raise AgentError(
                        ErrorCode.PYTHON_UNAVAILABLE,
                        "this sandbox's image has no python3 (on its PATH), so code cannot run in "
                        "Python here; run commands instead, or build the template from an image with Python",
                    )
                argv = [python, "-c", _BOOTSTRAP, str(_WORKER), str(request_read), str(reply_write)]
                env = {"MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
            else:
                # /proc/self/fd, not /dev/fd: without udev the guest has no /dev/fd link.
                argv = ["bash", "--noprofile", "--norc", f"/proc/self/fd/{request_read}"]
                env = {}
            self._process = self._table.spawn(
                argv, env=env, cwd=self.cwd, internal=True, pass_fds=(request_read, reply_write)
            )
        except BaseException:
            for fd in (request_write, reply_read):
                os.close(fd)
            raise
        finally:
            os.close(request_read)
            os.close(reply_write)
        self._requests_fd = request_write
        self._child_reply_fd = reply_write
        self._replies = _LineReader(reply_read)
        self._starting = self.language == "python"
        if self.language == "bash":
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            # Restore cwd and exported variables a previous shell of this context left.
            prologue = f"source {shlex.quote(str(self._state_file))} 2>/dev/null\n"
            os.write(self._requests_fd, prologue.encode())

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill(signal.SIGKILL, group=True)
            self._table.remove(self._process)
            self._process = None
        if self._requests_fd >= 0:
            os.close(self._requests_fd)
            self._requests_fd = -1
        if self._replies is not None:
            self._replies.close()
            self._replies = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def delete(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._state_file.unlink()

    def reseed(self) -> None:
        """The guest got new entropy (a restore): the interpreter reseeds before its next cell."""
        self._reseed = True

    def set_env(self, env: dict[str, str]) -> None:
        """New sandbox-wide variables (after a restore) reach the interpreter with its next cell."""
        self._env_updates.update(env)

    async def run(
        self,
        code: str,
        timeout_s: float | None,
        env: dict[str, str] | None,
        stdout: Sender,
        stderr: Sender,
        scratch: bool = False,
    ) -> Execution:
        async with self._lock:
            if self._process is None or self._process.finished:
                self.restart()
            if self._starting:
                try:
                    # The cell's time limit covers an interpreter that is still starting
                    # (one that hangs there: a site-packages .pth file that blocks, say).
                    await asyncio.wait_for(self._started(), timeout_s)
                except TimeoutError:
                    self.restart()
                    error = self._restart_error(True, timeout_s, None)
                    elapsed = timeout_s or 0.0
                    return Execution(error=error, execution_time_s=elapsed, timed_out=True, restarted=True)
            senders = {"stdout": stdout, "stderr": stderr}
            return await self._run_cell(code, timeout_s, env or {}, senders, scratch)

    async def wait_started(self) -> None:
        """Until the interpreter has finished starting (at once if it has)."""
        if self._starting:
            async with self._lock:
                await self._started()

    async def _started(self) -> None:
        if not self._starting:
            return
        assert self._replies is not None
        # A worker that died while starting fails the cell that follows, which says so.
        with contextlib.suppress(EOFError):
            await self._replies.readline()
        self._starting = False

    async def _run_cell(
        self,
        code: str,
        timeout_s: float | None,
        env: dict[str, str],
        senders: dict[str, Sender],
        scratch: bool,
    ) -> Execution:
        process = self._process
        assert process is not None and self._replies is not None
        marker = "\x1e" + secrets.token_hex(8) + "\x1e"
        filters = {name: MarkerFilter(marker.encode()) for name in senders}

        def forwarder(name: str) -> Sender:
            async def forward(data: bytes) -> None:
                if passed := filters[name].feed(data):
                    await senders[name](passed)

            return forward

        started = time.perf_counter()
        await _write_all(self._requests_fd, self._request_line(code, env, marker, scratch))
        output = asyncio.create_task(
            stream_output(
                process,
                {name: forwarder(name) for name in senders},
                replay=False,
                until=lambda: all(f.found for f in filters.values()),
            )
        )
        reply = asyncio.create_task(self._replies.readline())
        timed_out = False
        try:
            _, pending = await asyncio.wait({output, reply}, timeout=timeout_s)
            if pending:
                timed_out = True
                if self.language == "python":
                    # Like Ctrl-C: KeyboardInterrupt in the cell, its children interrupted too.
                    process.kill(signal.SIGINT, group=True)
                    _, pending = await asyncio.wait(pending, timeout=_INTERRUPT_GRACE_S)
        finally:
            for task in (output, reply):
                task.cancel()
            await asyncio.gather(output, reply, return_exceptions=True)
        for name, marker_filter in filters.items():
            if not marker_filter.found and (rest := marker_filter.flush()):
                await senders[name](rest)
        elapsed = time.perf_counter() - started
        if pending or reply.cancelled() or reply.exception() is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait_finished(), 0 if pending else 1.0)
            exit_code = process.exit_code
            self.restart()
            return Execution(
                error=self._restart_error(timed_out, timeout_s, exit_code),
                execution_time_s=elapsed,
                timed_out=timed_out,
                restarted=True,
            )
        return self._parse_reply(reply.result(), elapsed, timed_out)

    def _request_line(self, code: str, env: dict[str, str], marker: str, scratch: bool) -> bytes:
        env_updates, self._env_updates = self._env_updates, {}
        if self.language == "python":
            reseed, self._reseed = self._reseed, False
            request = {
                "code": code,
                "env": env,
                "set_env": env_updates,
                "marker": marker,
                "reseed": reseed,
                "scratch": scratch,
            }
            return json.dumps(request).encode() + b"\n"
        script = STATE_DIR / f"{self.context_id}.sh"
        script.write_text(code + "\n")
        exports = "".join(f"export {key}={shlex.quote(value)}; " for key, value in env_updates.items())
        if self._reseed:
            self._reseed = False
            exports += "RANDOM=$SRANDOM; "
        cell_env = "".join(f"export {key}={shlex.quote(value)}; " for key, value in env.items())
        source = f"source {shlex.quote(str(script))}"
        # Per-cell variables live in a subshell so that they end with the cell.
        body = f"( {cell_env}{source} )" if env else source
        state = shlex.quote(str(self._state_file))
        return (
            f"{exports}{body}; __ember_rc=$?; "
            f"{{ printf 'cd -- %q\\n' \"$PWD\"; export -p; }} > {state}; "
            f"printf '%s' '{marker}'; printf '%s' '{marker}' >&2; "
            f"printf '%d\\n' \"$__ember_rc\" >&{self._child_reply_fd}\n"
        ).encode()

    def _restart_error(
        self, timed_out: bool, timeout_s: float | None, exit_code: int | None
    ) -> ExecutionError:
        if self.language == "bash":
            lost = "the shell was restarted in the same directory with the same exported variables"
        else:
            lost = "the interpreter was restarted and its variables are lost"
        if timed_out:
            return ExecutionError(
                name="TimeoutError", value=f"execution exceeded {timeout_s} s; {lost}", traceback=""
            )
        return ExecutionError(
            name="ReplDied",
            value=f"the interpreter exited (status {exit_code}) while running this code; {lost}",
            traceback="",
        )

    def _parse_reply(self, line: bytes, elapsed: float, timed_out: bool) -> Execution:
        if self.language == "bash":
            exit_code = int(line.strip() or b"1")
            error = None
            if exit_code != 0:
                error = ExecutionError(name="NonZeroExit", value=f"exit status {exit_code}", traceback="")
            return Execution(error=error, execution_time_s=elapsed, timed_out=timed_out, exit_code=exit_code)
        reply = json.loads(line)
        error = reply.get("error")
        return Execution(
            results=[RichResult.from_wire(item) for item in reply.get("results") or []],
            error=ExecutionError.from_wire(error) if error else None,
            execution_count=int(reply.get("execution_count") or 0),
            execution_time_s=float(reply.get("execution_time_s") or elapsed),
            timed_out=timed_out,
        )


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    os.set_blocking(fd, False)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_writable(fd)
        except BrokenPipeError as exc:
            raise AgentError(ErrorCode.INTERNAL_ERROR, "the REPL process is gone") from exc


class ReplContexts:
    """All contexts of the sandbox, with one default per language created on demand."""

    def __init__(self, table: ProcessTable) -> None:
        self._table = table
        self._contexts: dict[str, ReplContext] = {}

    def default(self, language: str) -> ReplContext:
        context_id = f"default-{language}"
        if context_id not in self._contexts:
            context = ReplContext(self._table, context_id, language, WORKDIR)
            context.start()
            self._contexts[context_id] = context
        return self._contexts[context_id]

    def create(self, language: str, cwd: str | None) -> ReplContext:
        context = ReplContext(self._table, uuid.uuid4().hex[:12], language, cwd or WORKDIR)
        if not os.path.isdir(context.cwd):
            raise AgentError(ErrorCode.NOT_A_DIRECTORY, f"working directory {context.cwd} does not exist")
        context.start()
        self._contexts[context.context_id] = context
        return context

    def get(self, context_id: str) -> ReplContext:
        context = self._contexts.get(context_id)
        if context is None:
            raise AgentError(ErrorCode.CONTEXT_NOT_FOUND, f"no REPL context {context_id!r}")
        return context

    def list(self) -> list[ReplContext]:
        return list(self._contexts.values())

    def delete(self, context_id: str) -> None:
        self.get(context_id).delete()
        del self._contexts[context_id]

    def set_env(self, env: dict[str, str]) -> None:
        for context in self._contexts.values():
            context.set_env(env)

    def reseed(self) -> None:
        for context in self._contexts.values():
            context.reseed()
