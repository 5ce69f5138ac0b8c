"""Processes the agent starts: spawn, reap, buffer their output, stream it, signal them.

The agent is PID 1, so it reaps every child, its own and orphans alike, from one
SIGCHLD handler; nothing else may call waitpid. Each process's output is pumped
into bounded buffers whether or not anyone listens, so that background processes
never block on a full pipe and a client can reattach later. While a reader is
attached the pump does not run further ahead of it than the buffer holds: output
is then never lost, and a slow reader slows the process down instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import grp
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ember.agent._errors import AgentError
from ember.agent._fdio import wait_writable
from ember.agent.buffers import OutputBuffer
from ember.agent.image import IMAGE
from ember.protocol.codes import ErrorCode
from ember.protocol.messages import ProcessExit, ProcessInfo, PtySize
from ember.protocol.pulse import Pulse

OUTPUT_BUFFER_BYTES = 1 << 20
READ_BYTES = 1 << 20
# After the main process exits, how long its pumps run without reaching the pipes' end
# (they stay open while a backgrounded grandchild holds them) before it counts as finished.
EXIT_DRAIN_S = 0.25
FINISHED_KEPT = 256
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
F_SETPIPE_SZ = 1031


class ProcessState(enum.Enum):
    """Where a process is in its life; ``ManagedProcess._enter`` moves it."""

    RUNNING = "running"
    TIMED_OUT = "timed_out"  # its timeout fired and it was killed; not reaped yet
    EXITED = "exited"  # reaped; its output may still be coming (a grandchild holds the pipes)
    FINISHED = "finished"  # exited and its output closed or given up on: nothing more will come


_NEXT_STATES = {
    ProcessState.RUNNING: frozenset({ProcessState.TIMED_OUT, ProcessState.EXITED}),
    ProcessState.TIMED_OUT: frozenset({ProcessState.EXITED}),
    ProcessState.EXITED: frozenset({ProcessState.FINISHED}),
    ProcessState.FINISHED: frozenset[ProcessState](),
}


@dataclass(frozen=True, slots=True)
class Exit:
    """How a process ended: its status (128 + the signal if one ended it), and whether its timeout did."""

    code: int
    signal: int | None
    timed_out: bool


@dataclass
class Subscription:
    """A reader's position in a process's output streams."""

    offsets: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})


class ManagedProcess:
    """One child of the agent with its output buffers, input side and exit status."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        argv: list[str],
        cmd: str | None,
        cwd: str,
        tag: str | None,
        output_fds: dict[str, int],
        input_fd: int | None,
        pty: bool,
        internal: bool,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.argv = argv
        self.cmd = cmd
        self.cwd = cwd
        self.tag = tag
        self.pty = pty
        self.internal = internal
        self.started_at = time.time()
        self.buffers = {name: OutputBuffer(OUTPUT_BUFFER_BYTES) for name in output_fds}
        self.state = ProcessState.RUNNING
        self.exit: Exit | None = None
        self.changed = Pulse()
        self._loop = asyncio.get_running_loop()
        self._output_fds = dict(output_fds)
        self._paused: set[str] = set()
        self._input_fd = input_fd
        self._subscriptions: list[Subscription] = []
        self._timeout: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        for name, fd in output_fds.items():
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, READ_BYTES)
            self._loop.add_reader(fd, self._on_readable, name)
        if input_fd is not None and not pty:
            os.set_blocking(input_fd, False)

    @property
    def running(self) -> bool:
        return self.state in (ProcessState.RUNNING, ProcessState.TIMED_OUT)

    @property
    def finished(self) -> bool:
        return self.state is ProcessState.FINISHED

    @property
    def timed_out(self) -> bool:
        return self.state is ProcessState.TIMED_OUT or (self.exit is not None and self.exit.timed_out)

    @property
    def exit_code(self) -> int | None:
        return self.exit.code if self.exit is not None else None

    @property
    def exit_signal(self) -> int | None:
        return self.exit.signal if self.exit is not None else None

    def _enter(self, state: ProcessState) -> None:
        """The one way to change state; a move a process's life does not allow is an agent bug."""
        if state not in _NEXT_STATES[self.state]:
            raise RuntimeError(f"process {self.pid} cannot go from {self.state.value} to {state.value}")
        self.state = state
        self.changed.fire()

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            pid=self.pid,
            argv=self.argv,
            cmd=self.cmd,
            cwd=self.cwd,
            pty=self.pty,
            running=self.running,
            exit_code=self.exit_code,
            tag=self.tag,
            started_at=self.started_at,
        )

    def exit_result(self, truncated: bool = False) -> ProcessExit:
        return ProcessExit(
            pid=self.pid,
            exit_code=self.exit_code,
            signal=self.exit_signal,
            timed_out=self.timed_out,
            truncated=truncated,
        )

    # ------------------------------------------------------------ output pumps

    def _on_readable(self, name: str) -> None:
        fd = self._output_fds[name]
        room = self._room(name)
        if room <= 0:  # a reader replaying from the start of a full buffer
            self._pause(name)
            return
        try:
            # No more than the slowest reader can fall behind: the buffer then never
            # drops what a reader has not taken, however much the pipe holds.
            data = os.read(fd, min(READ_BYTES, room))
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: every holder of a terminal's slave side is gone
        if not data:
            self._close_output(name)
        else:
            self.buffers[name].append(data)
            if self._room(name) <= 0:
                self._pause(name)
        self.changed.fire()

    def _pause(self, name: str) -> None:
        self._loop.remove_reader(self._output_fds[name])
        self._paused.add(name)

    def _close_output(self, name: str) -> None:
        fd = self._output_fds.pop(name, None)
        if fd is None:
            return
        self._loop.remove_reader(fd)
        self._paused.discard(name)
        if not (self.pty and fd == self._input_fd):
            os.close(fd)
        self.buffers[name].close()
        self._check_finished()

    def _room(self, name: str) -> int:
        """How many more bytes of ``name`` the buffer takes before a reader would lose some."""
        buffer = self.buffers[name]
        behind = max((buffer.end - sub.offsets[name] for sub in self._subscriptions), default=0)
        return buffer.capacity - behind

    def subscribe(self, replay: bool) -> Subscription:
        if replay:
            offsets = {name: buffer.start for name, buffer in self.buffers.items()}
        else:
            offsets = {name: buffer.end for name, buffer in self.buffers.items()}
        subscription = Subscription(offsets)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        self.resume_output()

    def resume_output(self) -> None:
        """A reader moved on: restart pumps it was holding back."""
        resumed = False
        for name in list(self._paused):
            if self._room(name) > 0 and name in self._output_fds:
                self._paused.discard(name)
                self._loop.add_reader(self._output_fds[name], self._on_readable, name)
                resumed = True
        if resumed and self.state is ProcessState.EXITED:
            # The pumps get all of EXIT_DRAIN_S again to reach the pipes' end.
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            self._drain_timer = self._loop.call_later(EXIT_DRAIN_S, self._drained)

    # ------------------------------------------------------------ exit

    def set_timeout(self, timeout_s: float | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if timeout_s is not None and self.running:
            self._timeout = self._loop.call_later(timeout_s, self._on_timeout)

    def _on_timeout(self) -> None:
        self._enter(ProcessState.TIMED_OUT)
        self.kill(signal.SIGKILL, group=True)

    def on_exit(self, status: int) -> None:
        """The reaper saw it exit with ``status`` (as ``waitpid`` gives it)."""
        timed_out = self.state is ProcessState.TIMED_OUT
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            ended = Exit(128 + number, number, timed_out)
        else:
            ended = Exit(os.WEXITSTATUS(status), None, timed_out)
        self._enter(ProcessState.EXITED)
        self.exit = ended
        self.popen.returncode = ended.code
        if self._timeout is not None:
            self._timeout.cancel()
        if not self.pty and self._input_fd is not None:
            self.close_input()
        self._drain_timer = self._loop.call_later(EXIT_DRAIN_S, self._drained)
        self._check_finished()

    def _drained(self) -> None:
        self._drain_timer = None
        if self._paused:
            # A reader holds a pump back: what its pipe still holds is output, not a
            # grandchild's doing. ``resume_output`` starts the wait again.
            return
        if self.pty:
            # The terminal stays readable while grandchildren hold it; stop here.
            for name in list(self._output_fds):
                self._close_output(name)  # the last one finishes it
        if self.state is ProcessState.EXITED:
            self._finish()

    def _check_finished(self) -> None:
        if self.state is ProcessState.EXITED and not self._output_fds:
            self._finish()

    def _finish(self) -> None:
        self._enter(ProcessState.FINISHED)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self.pty and self._input_fd is not None:
            os.close(self._input_fd)
            self._input_fd = None

    async def wait_finished(self) -> None:
        while not self.finished:
            await self.changed.wait()

    # ------------------------------------------------------------ input and control

    def kill(self, sig: int, group: bool = True) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    async def write_input(self, data: bytes) -> None:
        if self._input_fd is None:
            raise AgentError(ErrorCode.INVALID_REQUEST, f"process {self.pid} has no open stdin")
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._input_fd, view) :]
            except BlockingIOError:
                await wait_writable(self._input_fd)
            except OSError as exc:
                raise AgentError(ErrorCode.INVALID_REQUEST, f"stdin of {self.pid}: {exc.strerror}") from exc

    def close_input(self) -> None:
        if self._input_fd is None:
            return
        if self.pty:
            with contextlib.suppress(OSError):
                os.write(self._input_fd, b"\x04")
            return
        os.close(self._input_fd)
        self._input_fd = None

    def resize(self, size: PtySize) -> None:
        if not self.pty or self._input_fd is None:
            raise AgentError(ErrorCode.INVALID_REQUEST, f"process {self.pid} has no terminal")
        _set_winsize(self._input_fd, size)


def _set_winsize(fd: int, size: PtySize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


def _acquire_controlling_terminal() -> None:
    # Runs in the child after setsid(): make the terminal on fd 0 its controlling tty.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def check_env(env: dict[str, str] | None) -> None:
    """Environment variables a shell can export and exec can pass: names are identifiers, no NULs."""
    for name, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(name):
            raise AgentError(ErrorCode.INVALID_REQUEST, f"{name!r} is not a valid environment variable name")
        if "\0" in value:
            raise AgentError(ErrorCode.INVALID_REQUEST, f"environment variable {name} holds a NUL byte")


def _validate_pty_size(size: PtySize) -> None:
    if not (1 <= size.cols <= 1000 and 1 <= size.rows <= 1000):
        raise AgentError(ErrorCode.INVALID_REQUEST, "terminal size must be 1..1000 columns and rows")


class ProcessTable:
    """Every process the agent started, by pid, and the reaper for all children."""

    def __init__(self) -> None:
        self._processes: dict[int, ManagedProcess] = {}
        self.base_env: dict[str, str] = {}
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self._reap)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self._processes.get(pid)
            if process is not None:
                process.on_exit(status)
        # (orphans re-parented to PID 1 are reaped above and simply forgotten)

    def get(self, pid: int) -> ManagedProcess:
        process = self._processes.get(pid)
        if process is None or process.internal:
            raise AgentError(ErrorCode.PROCESS_NOT_FOUND, f"no process with pid {pid}")
        return process

    def list(self) -> list[ManagedProcess]:
        return [p for p in self._processes.values() if not p.internal]

    def environment(self, user: pwd.struct_passwd, extra: dict[str, str] | None) -> dict[str, str]:
        """A process's environment: defaults, the image's, the sandbox's, then the request's."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "HOME": user.pw_dir,
            "USER": user.pw_name,
            "LOGNAME": user.pw_name,
            "SHELL": user.pw_shell or "/bin/bash",
        }
        env.update(IMAGE.env)
        env.update(self.base_env)
        if extra:
            env.update(extra)
        return env

    def which(self, program: str) -> str | None:
        """Where `program` is on the default user's PATH (the image's), if anywhere."""
        path = self.environment(_account(None), None)["PATH"]
        return shutil.which(program, path=path)

    def spawn(
        self,
        argv: list[str],
        *,
        cmd: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str = "/app",
        user: str | None = None,
        pty: PtySize | None = None,
        stdin: bool = False,
        tag: str | None = None,
        internal: bool = False,
        pass_fds: Iterable[int] = (),
        timeout_s: float | None = None,
    ) -> ManagedProcess:
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise AgentError(ErrorCode.INVALID_REQUEST, "command must be a non-empty list of strings")
        account = _account(user)
        if not os.path.isdir(cwd):
            raise AgentError(ErrorCode.NOT_A_DIRECTORY, f"working directory {cwd} does not exist")
        if timeout_s is not None and timeout_s <= 0:
            raise AgentError(ErrorCode.INVALID_REQUEST, "timeout must be positive")
        environment = self.environment(account, env)
        identity = {}
        if account.pw_uid != os.getuid() or account.pw_gid != os.getgid():
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        if pty is not None:
            _validate_pty_size(pty)
            master, slave = os.openpty()
            _set_winsize(master, pty)
            try:
                popen = _popen(
                    argv,
                    env=environment,
                    cwd=cwd,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    preexec_fn=_acquire_controlling_terminal,
                    pass_fds=pass_fds,
                    **identity,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            os.set_blocking(master, False)
            process = ManagedProcess(
                popen, argv, cmd, cwd, tag, {"stdout": master}, master, pty=True, internal=internal
            )
        else:
            # Our own pipes rather than Popen's file objects: the agent owns and
            # closes these fds, and no file object may close them a second time.
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            err_read, err_write = os.pipe2(os.O_CLOEXEC)
            in_read, in_write = os.pipe2(os.O_CLOEXEC) if stdin else (subprocess.DEVNULL, None)
            try:
                popen = _popen(
                    argv,
                    env=environment,
                    cwd=cwd,
                    stdin=in_read,
                    stdout=out_write,
                    stderr=err_write,
                    pass_fds=pass_fds,
                    **identity,
                )
            except BaseException:
                for fd in (out_read, err_read, in_write):
                    if fd is not None:
                        os.close(fd)
                raise
            finally:
                for fd in (out_write, err_write, in_read):
                    if fd != subprocess.DEVNULL:
                        os.close(fd)
            outputs = {"stdout": out_read, "stderr": err_read}
            process = ManagedProcess(
                popen, argv, cmd, cwd, tag, outputs, in_write, pty=False, internal=internal
            )
        self._processes[process.pid] = process
        process.set_timeout(timeout_s)
        self._forget_old()
        # The child may have exited before we registered it: reap now.
        self._reap()
        return process

    def _forget_old(self) -> None:
        done = [p for p in self._processes.values() if p.finished]
        for process in done[: max(0, len(done) - FINISHED_KEPT)]:
            del self._processes[process.pid]

    def remove(self, process: ManagedProcess) -> None:
        self._processes.pop(process.pid, None)


def _account(user: str | None) -> pwd.struct_passwd:
    """The account a process runs as: ``name``, ``uid``, ``name:group`` or ``uid:gid``, as an
    image's ``User`` says it (its default when the request names none; else uid 0, which needs
    no /etc/passwd: an image made ``FROM scratch`` has none)."""
    spec = user or IMAGE.user or "0"
    name, _, group = spec.partition(":")
    try:
        account = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        if not name.isdigit():
            raise AgentError(ErrorCode.INVALID_REQUEST, f"no user named {name!r} in the sandbox") from None
        # A uid without an entry in /etc/passwd runs as itself, at / (as docker run does).
        account = pwd.struct_passwd((name, "x", int(name), int(name), "", "/", ""))
    if not group:
        return account
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise AgentError(ErrorCode.INVALID_REQUEST, f"no group named {group!r} in the sandbox") from None
    fields = list(account)
    fields[3] = gid
    return pwd.struct_passwd(fields)


def _popen(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, start_new_session=True, close_fds=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise AgentError(ErrorCode.EXEC_FAILED, f"command not found: {argv[0]}") from exc
    except PermissionError as exc:
        raise AgentError(ErrorCode.EXEC_FAILED, f"cannot execute {argv[0]}: permission denied") from exc
    except OSError as exc:
        raise AgentError(ErrorCode.EXEC_FAILED, f"cannot start {argv[0]}: {exc.strerror}") from exc


Sender = Callable[[bytes], Awaitable[None]]


async def stream_output(
    process: ManagedProcess,
    senders: dict[str, Sender],
    *,
    replay: bool,
    limit_bytes: int | None = None,
    on_gap: Callable[[str, int], None] | None = None,
    until: Callable[[], bool] | None = None,
) -> bool:
    """Send a process's output to ``senders`` until it finishes; True if any was dropped.

    Output beyond ``limit_bytes`` is not sent: the reader then detaches so the
    process runs on at full speed, and only its exit is awaited. ``until`` ends
    the stream early (a REPL cell ends long before its interpreter does).
    """
    subscription = process.subscribe(replay)
    sent = 0
    truncated = False
    try:
        while True:
            progressed = False
            for name, buffer in process.buffers.items():
                offset = subscription.offsets[name]
                lost, data = buffer.read(offset, READ_BYTES)
                if not lost and not data:
                    continue
                progressed = True
                subscription.offsets[name] = offset + lost + len(data)
                if lost:
                    truncated = True
                    if on_gap is not None:
                        on_gap(name, lost)
                over_limit = limit_bytes is not None and sent + len(data) > limit_bytes
                if over_limit:
                    data = data[: limit_bytes - sent]  # type: ignore[operator]
                if data:
                    sent += len(data)
                    await senders[name](data)
                if over_limit:
                    process.unsubscribe(subscription)
                    await process.wait_finished()
                    return True
                process.resume_output()
            if until is not None and until():
                return truncated
            if progressed:
                continue
            if process.finished:
                return truncated
            await process.changed.wait()
    finally:
        process.unsubscribe(subscription)
