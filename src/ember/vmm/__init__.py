"""VMM drivers behind one small interface; the engine picks one and never sees the VMM."""

from ember.vmm.accel import Acceleration, detect
from ember.vmm.base import (
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_MEMORY_MIB,
    MIN_VCPUS,
    VirtualMachine,
    VmSpec,
    VmState,
)
from ember.vmm.qemu import QemuVM
from ember.vmm.qemu_driver import QemuDriver

__all__ = [
    "MAX_MEMORY_MIB",
    "MAX_VCPUS",
    "MIN_MEMORY_MIB",
    "MIN_VCPUS",
    "Acceleration",
    "QemuDriver",
    "QemuVM",
    "VirtualMachine",
    "VmSpec",
    "VmState",
    "detect",
]
