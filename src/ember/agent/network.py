"""The guest's network interface: there only while the sandbox's policy gives it a network.

The VM always has its virtio NIC (a restored VM needs the device set it was
saved with), so "no network" is the NIC's driver unbound: the guest has no
interface at all. The host enforces the policy either way; this keeps a
sandbox without network from seeing a dead interface.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

from ember.agent._errors import AgentError
from ember.protocol.codes import ErrorCode

_VIRTIO = Path("/sys/bus/virtio")
_DRIVER = _VIRTIO / "drivers" / "virtio_net"
_NET_DEVICE_ID = "0x0001"


def configure(config: dict[str, str]) -> None:
    """``{}``: remove the interface; ``{"address": "a.b.c.d/n", "gateway": "..."}``: bring it up so."""
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
    for command in (
        ["ip", "address", "flush", "dev", name],
        ["ip", "address", "add", str(address), "dev", name],
        ["ip", "link", "set", name, "up"],
        ["ip", "route", "replace", "default", "via", str(gateway)],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise AgentError(ErrorCode.INTERNAL_ERROR, f"{' '.join(command)}: {done.stderr.strip()}")
    with open("/etc/resolv.conf", "w") as handle:
        handle.write(f"nameserver {gateway}\n")


def _nic() -> str | None:
    devices = _VIRTIO / "devices"
    if not devices.is_dir():
        return None
    for device in sorted(os.listdir(devices)):
        if (devices / device / "device").read_text().strip() == _NET_DEVICE_ID:
            return device
    return None
