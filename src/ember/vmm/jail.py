"""The jail a VMM runs in, and the client of the jailer process that makes it.

A ``Jail`` says what one VMM may see and be: its uid and gid, the files bound
into its otherwise empty root (each at its own host path, so that paths on its
command line and in disk images mean the same inside and out), the device nodes,
its cgroups and resource limits. ``Jailer`` talks to ``ember.vmm._jailer``, a
single-threaded root process started once per driver, which forks each VMM
into its jail (its docstring says why a process of its own, and what the jail
holds). The daemon makes the jail rather than QEMU's own ``-runas``/``-chroot``:
QEMU drops its uid only after its seccomp filter is in place, which
``elevateprivileges=deny`` forbids, and a chroot alone leaves the host's mount,
network and IPC namespaces and the VMM's capability bounding set as they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import VmmError

log = logging.getLogger("ember.vmm")

_JAILER = Path(__file__).with_name("_jailer.py")
#: The empty directory every jail mounts its root on, each in its own mount namespace.
JAIL_ROOT = Path("/run/ember/jail")
_MAX_MESSAGE_BYTES = 1 << 20
#: How long a VMM's exit waits for the jailer's word on its status.
_EXIT_STATUS_WAIT_S = 2.0


@dataclass(frozen=True)
class Jail:
    """What one VMM process is allowed (see ``ember.vmm._jailer`` for how it is built)."""

    uid: int
    gid: int
    #: An empty directory on the host, mounted over (privately) as the jail's root.
    root: Path
    #: ``(path, writable)``: host files and directories that appear at the same path inside
    #: (nothing in them executable, but for ``executables``).
    binds: tuple[tuple[Path, bool], ...]
    devices: tuple[str, ...] = ("/dev/null", "/dev/urandom")
    #: Files the VMM writes "0" to, to join its cgroups before anything else (``Cgroup.join_files``).
    cgroups: tuple[Path, ...] = ()
    rlimits: dict[str, int] = field(default_factory=dict)
    tmp_bytes: int = 16 << 20
    #: A network namespace of its own (no network at all); False: the host's.
    own_network: bool = True
    #: Bound paths whose programs and libraries may run (an interpreter's), besides ``/usr``.
    executables: frozenset[Path] = frozenset()

    def to_wire(self) -> dict[str, object]:
        return {
            "uid": self.uid,
            "gid": self.gid,
            "root": str(self.root),
            "binds": [[str(path), writable, path in self.executables] for path, writable in self.binds],
            "devices": list(self.devices),
            "cgroups": [str(path) for path in self.cgroups],
            "rlimits": dict(self.rlimits),
            "tmp_bytes": self.tmp_bytes,
            "own_network": self.own_network,
        }


@dataclass(frozen=True)
class Process:
    """How a spawned program runs, jailed or not: its environment (nothing of the
    daemon's) and how the kernel treats its memory."""

    env: dict[str, str] = field(default_factory=dict)
    #: Transparent huge pages allowed in it (off: ``PR_SET_THP_DISABLE``, kept across exec).
    huge_pages: bool = True
    #: All its private memory a candidate for KSM (``PR_SET_MEMORY_MERGE``, kept across exec).
    merge: bool = False

    def to_wire(self) -> dict[str, object]:
        return {"env": dict(self.env), "huge_pages": self.huge_pages, "merge": self.merge}


def python_jail(uid: int, root: Path) -> Jail:
    """A jail for this very Python (its interpreter, its packages, Ember) in the host's
    network namespace: for the daemon's helpers that parse what guests send."""
    # Its interpreter, and extension modules wherever they are, are mapped executable.
    code = {Path(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p and Path(p).is_dir()}
    resolv = Path("/etc/resolv.conf")
    binds = tuple((path, False) for path in sorted(code | ({resolv} if resolv.exists() else set())))
    return Jail(
        uid=uid,
        gid=uid,
        root=root,
        binds=binds,
        own_network=False,
        executables=frozenset(code),
        rlimits={"RLIMIT_CORE": 0},
    )


class Jailer:
    """The daemon's end of the jailer process: spawn VMMs, hear of their exits.

    Started on first use; if it dies it is started again on the next spawn (the
    VMMs it started keep running). Its VMMs are its children, so their exit
    statuses come from it; an adopted VMM's status is unknown (-1).
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._next_id = 1
        self._replies: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._lock = asyncio.Lock()

    async def spawn(
        self, argv: list[str], fds: list[int], jail: Jail | None, process: Process | None = None
    ) -> int:
        """Start ``argv`` (absolute path first) with ``fds`` as its 1, 2, 3, ...; returns its pid."""
        async with self._lock:
            control = self._ensure_started()
            request_id, self._next_id = self._next_id, self._next_id + 1
            reply: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
            self._replies[request_id] = reply
            message = {
                "id": request_id,
                "argv": argv,
                "jail": jail.to_wire() if jail else None,
                **(process or Process()).to_wire(),
            }
            try:
                socket.send_fds(control, [json.dumps(message).encode()], fds)
                answer = await reply
            finally:
                self._replies.pop(request_id, None)
        if "error" in answer:
            raise VmmError(f"could not start {Path(argv[0]).name} in its jail: {answer['error']}")
        pid = int(answer["pid"])  # type: ignore[call-overload]
        return pid

    async def exit_status(self, pid: int) -> int:
        """The exit status of a VMM this jailer started that has exited; -1 if unknown."""
        status = self._exits.get(pid)
        if status is None:
            return -1
        try:
            return await asyncio.wait_for(asyncio.shield(status), _EXIT_STATUS_WAIT_S)
        except TimeoutError:
            return -1
        finally:
            if status.done():
                self._exits.pop(pid, None)

    async def close(self) -> None:
        """Stop the jailer (its running VMMs carry on)."""
        control, process = self._socket, self._process
        self._socket = self._process = None
        if control is not None:
            asyncio.get_running_loop().remove_reader(control.fileno())
            control.close()
        if process is not None:
            await asyncio.to_thread(process.wait)
        self._fail_all("the jailer was stopped")

    def _ensure_started(self) -> socket.socket:
        if self._socket is not None and self._process is not None and self._process.poll() is None:
            return self._socket
        if self._socket is not None:
            log.warning("the jailer exited; starting it again")
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Its standard input is the control socket; its VMMs carry on in a session of their own.
            argv = [sys.executable, "-S", "-I", str(_JAILER)]
            self._process = subprocess.Popen(argv, stdin=theirs, close_fds=True, start_new_session=True)
        finally:
            theirs.close()
        ours.setblocking(False)
        self._socket = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable)
        return ours

    def _on_readable(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(_MAX_MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_lost()
                return
            message = json.loads(data)
            if "exited" in message:
                self._exit_future(int(message["exited"])).set_result(int(message["status"]))
                continue
            reply = self._replies.get(message.get("id"))
            if reply is not None and not reply.done():
                if "pid" in message:
                    self._exit_future(int(message["pid"]))
                reply.set_result(message)

    def _exit_future(self, pid: int) -> asyncio.Future[int]:
        future = self._exits.get(pid)
        if future is None or future.done():
            future = self._exits[pid] = asyncio.get_running_loop().create_future()
        return future

    def _on_lost(self) -> None:
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
        self._socket = None
        self._fail_all("the jailer exited")

    def _fail_all(self, why: str) -> None:
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(VmmError(why))
        for status in self._exits.values():
            if not status.done():
                status.set_result(-1)
        self._exits.clear()
