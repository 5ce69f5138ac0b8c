"""The jailer process: forks every VMM into a jail of its own. Standard library only.

Run by the daemon as ``python -S -I _jailer.py`` with a SOCK_SEQPACKET socket
on fd 3 (``ember.vmm.jail.Jailer`` is the other end). Each request is one JSON
message (``argv``, ``jail`` or null, the process's ``env``, ``huge_pages`` and
``merge``) carrying its file descriptors (SCM_RIGHTS); the jailer forks, the
child sets how the kernel treats its memory, builds the jail and executes the
VMM with those descriptors as its 1, 2, 3, ..., and the jailer answers with the
pid, or with what went wrong. When a VMM exits the jailer reaps it and says
so. It never kills a VMM: when the daemon goes away (end of file on the
socket) the jailer exits and its VMMs run on, for the next daemon to adopt.

Why a process of its own rather than the daemon: a jail is built between
``fork`` and ``exec`` (namespaces, mounts, ``pivot_root``, the identity), and
the daemon is multi-threaded, where running Python in a forked child can
deadlock; a launcher executed for each VMM would be single-threaded but costs
~20 ms of interpreter start-up (measured) on every restore. This process is
single-threaded and started once, so a fork costs about a millisecond.

The jail, in order (Firecracker's jailer is the model): a session of its own;
the sandbox's cgroups; new mount, network, IPC, UTS and cgroup namespaces (the
VMM has no network at all: a tap reaches it as a file descriptor; the network
services keep the host's); a tmpfs
root holding only the files the jail names, each bound at its own host path
(read-only unless the VMM writes it), ``/usr`` read-only for the VMM's binary
and libraries, a ``/dev`` with only the named devices, a ``/proc`` that shows
only its own processes and a private ``/tmp``; ``pivot_root`` into it, the old
root detached and the new one read-only; resource limits; an empty capability
bounding set; the sandbox's own uid and gid with no supplementary groups; and
``no_new_privs``, so that nothing it executes can gain privileges again.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import selectors
import signal
import socket
import sys

CONTROL_FD = 0  # standard input
MAX_MESSAGE_BYTES = 1 << 20
MAX_FDS = 16
_HIGH_FD = 100

_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
_CLONE_NEWIPC, _CLONE_NEWNET = 0x08000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
_MNT_DETACH = 2
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 24, 38, 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_THP_DISABLE, _PR_SET_MEMORY_MERGE = 41, 67
_SYS_PIVOT_ROOT = 155  # x86_64

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    """A step of building the jail failed; the message names the step."""


def _check(result: int, step: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise JailError(f"{step}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    result = _libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))
    _check(result, f"mount {source or fstype or ''} on {target}")


def _bind(source: str, target: str, flags: int) -> None:
    """Bind ``source`` at ``target`` (made as an empty file or directory), with ``flags``."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    _mount(source, target, None, _MS_BIND)
    # A bind mount takes its flags only from a remount.
    _mount(None, target, None, _MS_BIND | _MS_REMOUNT | flags)


def _build_root(jail: dict, root: str) -> None:
    """The jail's file tree under ``root``, seen from the host's tree."""
    inside = lambda path: root + path  # noqa: E731  every path keeps its host name
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    _bind("/usr", inside("/usr"), _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    for name in ("bin", "sbin", "lib", "lib64"):  # merged /usr: links; otherwise bound too
        host = f"/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), inside(host))
        elif os.path.isdir(host):
            _bind(host, inside(host), _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.mkdir(inside("/dev"))
    _mount("tmpfs", inside("/dev"), "tmpfs", _MS_NOSUID | _MS_NOEXEC, "mode=0755,size=64k")
    for device in jail["devices"]:
        _bind(device, inside(device), _MS_NOSUID | _MS_NOEXEC)
    os.mkdir(inside("/proc"))
    proc_flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    try:
        _mount("proc", inside("/proc"), "proc", proc_flags, "hidepid=invisible,subset=pid")
    except JailError:  # before Linux 5.8: no subset=pid
        _mount("proc", inside("/proc"), "proc", proc_flags, "hidepid=2")
    os.mkdir(inside("/tmp"))
    tmp = f"mode=0700,size={jail['tmp_bytes']},uid={jail['uid']},gid={jail['gid']}"
    _mount("tmpfs", inside("/tmp"), "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, tmp)
    # Shallow paths first, so that a directory bound later never hides a file bound inside it.
    for path, writable, executable in sorted(jail["binds"], key=lambda bind: bind[0].count("/")):
        flags = _MS_NOSUID | _MS_NODEV | (0 if executable else _MS_NOEXEC) | (0 if writable else _MS_RDONLY)
        _bind(path, inside(path), flags)


def _enter(jail: dict) -> None:
    """Turn this (forked, single-threaded, root) process into the jailed one."""
    for join in jail["cgroups"]:  # "0": this very process (single-threaded)
        with open(join, "w") as handle:
            handle.write("0\n")
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        last_cap = int(handle.read())
    namespaces = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS | _CLONE_NEWCGROUP
    if jail.get("own_network", True):
        namespaces |= _CLONE_NEWNET
    _check(_libc.unshare(namespaces), "unshare namespaces")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing done here reaches the host
    root = jail["root"]
    _build_root(jail, root)
    os.chdir(root)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", _MNT_DETACH), "detach the host's root")
    os.chdir("/")
    _mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    for name, limit in jail["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (limit, limit))
    for capability in range(last_cap + 1):
        _check(_libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0), f"drop capability {capability}")
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(jail["gid"], jail["gid"], jail["gid"])
    os.setresuid(jail["uid"], jail["uid"], jail["uid"])  # from uid 0 to another: no capabilities left
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def _set_memory(request: dict) -> None:
    """How the kernel treats the VMM's memory; both settings outlive the exec. Before the
    jail: marking memory mergeable needs CAP_SYS_RESOURCE."""
    if not request.get("huge_pages", True):
        _check(_libc.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0), "turn off transparent huge pages")
    if request.get("merge"):
        _check(_libc.prctl(_PR_SET_MEMORY_MERGE, 1, 0, 0, 0), "make its memory mergeable (KSM)")


def _place_fds(fds: list[int], errors: int) -> int:
    """Make ``fds`` the child's 1, 2, 3, ... and close every other descriptor but the
    error pipe, which moves above them (close-on-exec) and is returned."""
    errors = fcntl.fcntl(errors, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD + MAX_FDS)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH_FD) for fd in fds]
    os.dup2(os.open("/dev/null", os.O_RDWR), 0)
    for target, fd in enumerate(high, start=1):
        os.dup2(fd, target)
    os.closerange(len(high) + 1, errors)
    os.closerange(errors + 1, 1 << 16)
    return errors


def _child(request: dict, fds: list[int], errors: int) -> None:
    """In the forked child: jail, place the descriptors, become the VMM. Never returns."""
    try:
        os.setsid()
        os.umask(0o022)  # the jail's own directories: traversable by the VMM
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        errors = _place_fds(fds, errors)
        _set_memory(request)
        if request.get("jail") is not None:
            _enter(request["jail"])
        os.umask(0o077)  # what the VMM creates is its own
        argv = request["argv"]
        os.execve(argv[0], argv, request.get("env") or {})
    except BaseException as exc:  # reported to the daemon, which raises it
        os.write(errors, f"{exc}".encode(errors="replace")[:4000])
    finally:
        os._exit(127)


def _spawn(request: dict, fds: list[int]) -> dict:
    errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(errors_r)
        _child(request, fds, errors_w)
    os.close(errors_w)
    try:
        # End of file without a word means the exec succeeded.
        chunks = []
        while chunk := os.read(errors_r, 4096):
            chunks.append(chunk)
    finally:
        os.close(errors_r)
    if chunks:
        os.waitpid(pid, 0)
        return {"id": request.get("id"), "error": b"".join(chunks).decode(errors="replace")}
    return {"id": request.get("id"), "pid": pid}


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _send(control: socket.socket, message: dict) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:  # the daemon is gone; its VMMs carry on
        pass


def main() -> None:
    control = socket.socket(fileno=CONTROL_FD)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the daemon
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                while True:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        break
                _reap(control)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE_BYTES, MAX_FDS)
            except OSError:
                return
            if not data:
                return  # the daemon closed its end
            try:
                reply = _spawn(json.loads(data), fds)
            except (ValueError, KeyError, OSError) as exc:
                reply = {"error": f"bad request to the jailer: {exc}"}
            finally:
                for fd in fds:
                    os.close(fd)
            _send(control, reply)
            _reap(control)


if __name__ == "__main__":
    sys.exit(main())
