"""Where Ember keeps its files and how it runs VMs, read once from the environment.

Every knob has an ``EMBER_*`` environment variable so that tests, the daemon and
the CLI agree without passing paths around. Nothing here imports the rest of Ember.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Accel = Literal["auto", "kvm", "tcg"]


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "ember"


def _default_run_dir() -> Path:
    # Guest memory files live here: tmpfs keeps the kernel from writing running
    # VMs' RAM back to disk. Short path: unix socket paths are limited to 108 bytes.
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() else Path("/tmp")
    return root / f"ember-{os.getuid()}"


@dataclass(frozen=True)
class Settings:
    """Host-side configuration shared by images, VMM drivers and the engine."""

    data_dir: Path = field(default_factory=_default_data_dir)
    run_dir: Path = field(default_factory=_default_run_dir)
    accel: Accel = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    debian_mirror: str | None = None
    tcg_tb_size_mib: int = 64
    #: Warm pool: how many ready sandboxes the daemon keeps per template (EMBER_POOL="base=2,data=1").
    pool: tuple[tuple[str, int], ...] = (("base", 2),)
    #: Addresses for sandbox networks: each sandbox with a network takes 8 of them.
    network_cidr: str = "100.96.0.0/12"
    #: Where sandbox DNS queries go ("ip" or "ip:port"); None: the host's first resolv.conf nameserver.
    dns_upstream: str | None = None
    #: Host-based port URLs ``{port}-{id}.{domain}`` when set (the path-based ones always work).
    domain: str | None = None
    #: E2B's host-based routing: ``{port}-{sandbox_id}.{e2b_domain}`` reaches that sandbox (EMBER_E2B_DOMAIN).
    e2b_domain: str | None = None

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        accel = env.get("EMBER_ACCEL", "auto")
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"EMBER_ACCEL must be auto, kvm or tcg, not {accel!r}")
        kwargs: dict[str, object] = {"accel": accel}
        if "EMBER_DATA_DIR" in env:
            kwargs["data_dir"] = Path(env["EMBER_DATA_DIR"])
        if "EMBER_RUN_DIR" in env:
            kwargs["run_dir"] = Path(env["EMBER_RUN_DIR"])
        if "EMBER_QEMU" in env:
            kwargs["qemu_binary"] = env["EMBER_QEMU"]
        if "EMBER_DEBIAN_MIRROR" in env:
            kwargs["debian_mirror"] = env["EMBER_DEBIAN_MIRROR"]
        if "EMBER_TCG_TB_SIZE" in env:
            kwargs["tcg_tb_size_mib"] = int(env["EMBER_TCG_TB_SIZE"])
        if "EMBER_NETWORK_CIDR" in env:
            kwargs["network_cidr"] = env["EMBER_NETWORK_CIDR"]
        if "EMBER_DNS_UPSTREAM" in env:
            kwargs["dns_upstream"] = env["EMBER_DNS_UPSTREAM"]
        if env.get("EMBER_DOMAIN"):
            kwargs["domain"] = env["EMBER_DOMAIN"].strip(".").lower()
        if env.get("EMBER_E2B_DOMAIN"):
            kwargs["e2b_domain"] = env["EMBER_E2B_DOMAIN"]
        if "EMBER_POOL" in env:
            kwargs["pool"] = parse_pool(env["EMBER_POOL"])
        return cls(**kwargs)  # type: ignore[arg-type]


def parse_pool(text: str) -> tuple[tuple[str, int], ...]:
    """``"base=2,data=1"`` -> ``(("base", 2), ("data", 1))``; an empty string turns the pool off."""
    pool: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if not name or not count.isdigit() or int(count) > 64:
            raise ValueError(f"EMBER_POOL entries look like template=count (0-64), not {item!r}")
        pool[name] = int(count)
    return tuple(pool.items())
