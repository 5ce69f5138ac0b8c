"""The guest's network interface: there only while the sandbox's policy gives it a network.

The VM always has its virtio NIC (a restored VM needs the device set it was
saved with), so "no network" is the NIC's driver unbound: the guest has no
interface at all. The host enforces the policy either way; this keeps a
sandbox without network from seeing a dead interface.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
from pathlib import Path

from ember.agent._errors import AgentError
from ember.agent.system import set_link_up
from ember.protocol.codes import ErrorCode

_VIRTIO = Path("/sys/bus/virtio")
_DRIVER = _VIRTIO / "drivers" / "virtio_net"
_NET_DEVICE_ID = "0x0001"
# ioctls rather than iproute2: under TCG each `ip` process costs the guest ~150 ms.
_SIOCSIFADDR, _SIOCSIFNETMASK, _SIOCADDRT, _SIOCDELRT = 0x8916, 0x891C, 0x890B, 0x890C
_RTF_UP, _RTF_GATEWAY = 0x1, 0x2
# struct rtentry (x86-64): pad, dst, gateway, genmask, flags, pad, pad, pad, metric, dev, mtu, window, irtt.
_RTENTRY = "@L16s16s16sHhLPhPLLH0L"


#: The configuration last applied. It is part of the guest's memory, so a
#: restored guest knows what its snapshot had and skips a request for the same.
_applied: dict[str, str] | None = None


def changes(config: dict[str, str]) -> bool:
    """Whether ``config`` differs from what the interface has (the no-op costs no thread)."""
    return config != _applied


def configure(config: dict[str, str]) -> None:
    """``{}``: remove the interface; ``{"address": "a.b.c.d/n", "gateway": "..."}``: bring it up so."""
    global _applied
    _apply(config)
    _applied = dict(config)


def _apply(config: dict[str, str]) -> None:
    device = _nic()
    if device is None:
        if config:
            raise AgentError(ErrorCode.INVALID_REQUEST, "this VM has no network device")
        return
    bound = (_DRIVER / device).exists()
    if not config:
        if bound:
            (_DRIVER / "unbind").write_text(device)
        return
    try:
        address = ipaddress.IPv4Interface(config["address"])
        gateway = ipaddress.IPv4Address(config["gateway"])
    except (KeyError, ValueError) as exc:
        raise AgentError(ErrorCode.INVALID_REQUEST, f"invalid network config {config!r}") from exc
    if not bound:
        (_DRIVER / "bind").write_text(device)
    name = os.listdir(_VIRTIO / "devices" / device / "net")[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCSIFADDR, _ifreq(name, address.ip))
        fcntl.ioctl(sock, _SIOCSIFNETMASK, _ifreq(name, address.network.netmask))
        set_link_up(name)
        default = _rtentry(gateway)
        try:
            fcntl.ioctl(sock, _SIOCDELRT, default)  # a restored guest's route to its source's gateway
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.ENETUNREACH):
                raise
        fcntl.ioctl(sock, _SIOCADDRT, default)
    with open("/etc/resolv.conf", "w") as handle:
        handle.write(f"nameserver {gateway}\n")


def _sockaddr(address: ipaddress.IPv4Address) -> bytes:
    return struct.pack("=H2s4s8x", socket.AF_INET, b"", address.packed)


def _ifreq(name: str, address: ipaddress.IPv4Address) -> bytes:
    return struct.pack("16s16s8x", name.encode(), _sockaddr(address))


def _rtentry(gateway: ipaddress.IPv4Address) -> bytes:
    any_address = _sockaddr(ipaddress.IPv4Address(0))
    flags = _RTF_UP | _RTF_GATEWAY
    return struct.pack(
        _RTENTRY, 0, any_address, _sockaddr(gateway), any_address, flags, 0, 0, 0, 0, 0, 0, 0, 0
    )


def _nic() -> str | None:
    devices = _VIRTIO / "devices"
    if not devices.is_dir():
        return None
    for device in sorted(os.listdir(devices)):
        if (devices / device / "device").read_text().strip() == _NET_DEVICE_ID:
            return device
    return None
