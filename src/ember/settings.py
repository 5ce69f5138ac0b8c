"""Where Ember keeps its files and how it runs VMs, read once from the environment.

Every knob has an ``EMBER_*`` environment variable so that tests, the daemon and
the CLI agree without passing paths around. Nothing here imports the rest of Ember.
"""

from __future__ import annotations

import hashlib
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
    #: Every VMM in a jail of its own (EMBER_JAIL=off runs them unconfined, as the daemon's user:
    #: for development only, never for untrusted code).
    jail: bool = True
    #: The uids (and gids of the same numbers) that jailed VMMs run as, one per sandbox (EMBER_UID_RANGE).
    uid_range: tuple[int, int] = (200_000, 265_535)
    #: Free space kept in the data directory: creates and snapshots are refused below it
    #: (EMBER_DISK_RESERVE_MIB). Sparse disk layers may promise more than the disk holds.
    disk_reserve_mib: int = 1024
    #: Host memory a VMM may use beyond its guest's RAM before its cgroup ends it
    #: (EMBER_VMM_OVERHEAD_MIB; None: the driver's measured figure for this acceleration).
    vmm_overhead_mib: int | None = None
    #: The most an OCI image may unpack to (EMBER_IMAGE_MAX_MIB): a bigger one is refused.
    image_max_mib: int = 16384
    #: Registries reached over plain HTTP (EMBER_INSECURE_REGISTRIES="host:port,..."); loopback always is.
    insecure_registries: tuple[str, ...] = ()
    #: Identical pages of VMMs merged by the kernel (EMBER_KSM=on): less memory per sandbox, but
    #: a side channel between sandboxes (``ember.vmm.ksm``); for sandboxes that trust each other.
    ksm: bool = False
    #: What each pooled sandbox runs once before a caller gets it (EMBER_POOL_WARMUP="code,command",
    #: "none"): under TCG a call's first run translates its guest code, which then stays in the
    #: VMM's memory. "code" (the default) makes the first run_code fast (~25 ms instead of ~130);
    #: "command" does the same for the first command (~40 ms instead of ~210) for 16 MiB more
    #: per idle sandbox (``ember bench``).
    pool_warmup: tuple[str, ...] = ("code",)

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def oci_dir(self) -> Path:
        """Root filesystems made from OCI images, by image digest (``ember.images.oci``)."""
        return self.data_dir / "oci-images"

    @property
    def instance(self) -> str:
        """Names this daemon's host-wide things (namespaces, cgroups, uid claims) apart from
        other daemons' on the same host: a hash of its data directory."""
        return hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:6]

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
        if "EMBER_JAIL" in env:
            kwargs["jail"] = parse_switch("EMBER_JAIL", env["EMBER_JAIL"])
        if "EMBER_UID_RANGE" in env:
            kwargs["uid_range"] = parse_range("EMBER_UID_RANGE", env["EMBER_UID_RANGE"])
        if "EMBER_DISK_RESERVE_MIB" in env:
            kwargs["disk_reserve_mib"] = int(env["EMBER_DISK_RESERVE_MIB"])
        if "EMBER_VMM_OVERHEAD_MIB" in env:
            kwargs["vmm_overhead_mib"] = int(env["EMBER_VMM_OVERHEAD_MIB"])
        if "EMBER_IMAGE_MAX_MIB" in env:
            kwargs["image_max_mib"] = int(env["EMBER_IMAGE_MAX_MIB"])
        if "EMBER_KSM" in env:
            kwargs["ksm"] = parse_switch("EMBER_KSM", env["EMBER_KSM"])
        if "EMBER_POOL_WARMUP" in env:
            kwargs["pool_warmup"] = parse_warmup(env["EMBER_POOL_WARMUP"])
        if "EMBER_INSECURE_REGISTRIES" in env:
            names = (name.strip() for name in env["EMBER_INSECURE_REGISTRIES"].split(","))
            kwargs["insecure_registries"] = tuple(name for name in names if name)
        return cls(**kwargs)  # type: ignore[arg-type]


POOL_WARMUPS = ("code", "command")


def parse_warmup(text: str) -> tuple[str, ...]:
    """``"code,command"`` -> ``("code", "command")``; ``"none"`` or an empty string: nothing."""
    parts = tuple(dict.fromkeys(filter(None, (part.strip() for part in text.split(",")))))
    if parts == ("none",):
        return ()
    unknown = [part for part in parts if part not in POOL_WARMUPS]
    if unknown:
        raise ValueError(
            f"EMBER_POOL_WARMUP is a list of {' and '.join(POOL_WARMUPS)} (or none), not {text!r}"
        )
    return parts


def parse_pool(text: str) -> tuple[tuple[str, int], ...]:
    """``"base=2,data=1"`` -> ``(("base", 2), ("data", 1))``; an empty string turns the pool off."""
    pool: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if not name or not count.isdigit() or int(count) > 64:
            raise ValueError(f"EMBER_POOL entries look like template=count (0-64), not {item!r}")
        pool[name] = int(count)
    return tuple(pool.items())


def parse_switch(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "on", "yes", "true"):
        return True
    if value in ("0", "off", "no", "false"):
        return False
    raise ValueError(f"{name} is on or off, not {text!r}")


def parse_range(name: str, text: str) -> tuple[int, int]:
    """``"200000-265535"`` -> ``(200000, 265535)``."""
    first, _, last = text.strip().partition("-")
    if not (first.isdigit() and last.isdigit()) or not 0 < int(first) <= int(last) < 2**32 - 1:
        raise ValueError(f"{name} looks like FIRST-LAST with 0 < FIRST <= LAST, not {text!r}")
    return int(first), int(last)
