"""Checking that the final kernel .config has every option of Ember's fragment."""

from __future__ import annotations

from ember.images.kconfig import NOT_SET, parse_kconfig, unmet_options
from ember.images.kernel import kernel_fragment

FRAGMENT = """\
# comment
CONFIG_64BIT=y
CONFIG_NR_CPUS=8
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y
CONFIG_CMDLINE="console=ttyS0"
# CONFIG_PCI is not set
# CONFIG_ACPI is not set
"""

CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
CONFIG_NR_CPUS=8
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y
CONFIG_CMDLINE="console=ttyS0"
# CONFIG_PCI is not set
"""


def test_parse_reads_set_and_unset_options() -> None:
    options = parse_kconfig(FRAGMENT)
    assert options["CONFIG_NR_CPUS"] == "8"
    assert options["CONFIG_CMDLINE"] == '"console=ttyS0"'
    assert options["CONFIG_PCI"] == NOT_SET
    assert len(options) == 6


def test_config_with_everything_asked_has_no_unmet_options() -> None:
    # CONFIG_ACPI is absent from the .config: Kconfig omits it, which means not set.
    assert unmet_options(FRAGMENT, CONFIG) == []


def test_dropped_wrong_and_unwanted_options_are_all_reported() -> None:
    config = (
        CONFIG.replace("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n", "")
        .replace("CONFIG_NR_CPUS=8", "CONFIG_NR_CPUS=64")
        .replace("# CONFIG_PCI is not set", "CONFIG_PCI=y")
    )
    assert unmet_options(FRAGMENT, config) == [
        "CONFIG_NR_CPUS: wanted 8, got 64",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES: wanted y, got not set",
        "CONFIG_PCI: wanted n, got y",
    ]


def test_shipped_fragment_asks_for_what_both_vmms_need() -> None:
    options = parse_kconfig(kernel_fragment())
    for needed in (
        "CONFIG_64BIT",
        "CONFIG_PVH",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_KVM_GUEST",
        "CONFIG_SERIO_I8042",
        "CONFIG_KEYBOARD_ATKBD",
        "CONFIG_OVERLAY_FS",
    ):
        assert options[needed] == "y", needed
    for absent in ("CONFIG_PCI", "CONFIG_ACPI", "CONFIG_MODULES"):
        assert options[absent] == NOT_SET, absent
