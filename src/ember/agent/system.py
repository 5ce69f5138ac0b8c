"""The guest's identity and kernel state: loopback, hostname, clock, entropy.

After a snapshot restore or a fork every copy wakes up with the same clock, the
same hostname and the same kernel random state as its source. ``configure`` is
how the host gives each copy its own: the wall clock set from the host, fresh
host randomness credited to the kernel pool and the CRNG forced to reseed (writing
to /dev/urandom alone changes nothing until the next periodic reseed).
"""

from __future__ import annotations

import base64
import fcntl
import os
import socket
import struct
import time

from ember.agent._errors import AgentError
from ember.protocol.codes import ErrorCode

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_RNDADDENTROPY = 0x40085203
_RNDRESEEDCRNG = 0x5207
_MAX_HOSTNAME = 63


def bring_up_loopback() -> None:
    """No init system brings lo up; without it nothing can bind 127.0.0.1."""
    set_link_up("lo")


def set_link_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | _IFF_UP))


def set_hostname(name: str) -> None:
    """The kernel's name only: /etc/hostname links to it and glibc's myhostname
    module resolves it, so a restore renames the guest without writing a file."""
    if not name or len(name) > _MAX_HOSTNAME or not all(c.isalnum() or c == "-" for c in name):
        raise AgentError(ErrorCode.INVALID_REQUEST, f"invalid hostname {name!r}")
    socket.sethostname(name)


def set_clock(time_ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)


def add_entropy(entropy_b64: str) -> None:
    try:
        seed = base64.b64decode(entropy_b64, validate=True)
    except ValueError as exc:
        raise AgentError(ErrorCode.INVALID_REQUEST, "entropy must be base64") from exc
    if not 16 <= len(seed) <= 512:
        raise AgentError(ErrorCode.INVALID_REQUEST, "entropy must be 16..512 bytes")
    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(fd, _RNDRESEEDCRNG)
    finally:
        os.close(fd)


def hostname() -> str:
    return socket.gethostname()


def kernel_release() -> str:
    return os.uname().release
