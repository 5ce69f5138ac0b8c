"""VMM drivers behind one small interface; the engine picks one and never sees the VMM."""

from ember.vmm.accel import Acceleration, detect
from ember.vmm.base import VirtualMachine, VmSpec, VmState
from ember.vmm.qemu import QemuVM
from ember.vmm.qemu_driver import QemuDriver

__all__ = [
    "Acceleration",
    "QemuDriver",
    "QemuVM",
    "VirtualMachine",
    "VmSpec",
    "VmState",
    "detect",
]
