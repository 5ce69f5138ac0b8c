"""Choosing between hardware KVM and QEMU's software CPU (TCG).

``/dev/kvm`` existing is not enough: some nested hosts expose a paravirtual KVM
(``kvm_pvm``) that only runs guest kernels built for it, and an ordinary guest
dies there with "KVM internal error". Hardware KVM is recognised by its vendor
module (``kvm_intel`` or ``kvm_amd``); with neither, Ember uses TCG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ember.errors import VmmError
from ember.settings import Settings

SYS_MODULE = Path("/sys/module")


@dataclass(frozen=True)
class Acceleration:
    kind: Literal["kvm", "tcg"]
    reason: str


def _kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _hardware_kvm(sys_module: Path) -> bool:
    return (sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists()


def detect(settings: Settings, sys_module: Path = SYS_MODULE) -> Acceleration:
    if settings.accel == "tcg":
        return Acceleration("tcg", "EMBER_ACCEL=tcg")
    if settings.accel == "kvm":
        if not _kvm_device_usable():
            raise VmmError("EMBER_ACCEL=kvm but /dev/kvm is missing or not accessible; unset it to use TCG")
        return Acceleration("kvm", "EMBER_ACCEL=kvm")
    if not _kvm_device_usable():
        return Acceleration("tcg", "no usable /dev/kvm")
    if _hardware_kvm(sys_module):
        return Acceleration("kvm", "hardware KVM (kvm_intel/kvm_amd)")
    if (sys_module / "kvm_pvm").exists():
        return Acceleration("tcg", "/dev/kvm is kvm_pvm, which cannot run ordinary guest kernels")
    return Acceleration("tcg", "/dev/kvm has no kvm_intel/kvm_amd behind it")
