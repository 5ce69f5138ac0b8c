"""Choosing KVM or TCG from what the host's kernel exposes."""

from __future__ import annotations

import pytest

from ember.errors import VmmError
from ember.settings import Settings
from ember.vmm import accel


@pytest.fixture
def kvm_device(monkeypatch):
    state = {"usable": True}
    monkeypatch.setattr(accel, "_kvm_device_usable", lambda: state["usable"])
    return state


def test_kvm_pvm_without_a_vendor_module_falls_back_to_tcg(tmp_path, kvm_device):
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_pvm").mkdir()
    decision = accel.detect(Settings(accel="auto"), sys_module=tmp_path)
    assert decision.kind == "tcg"
    assert "kvm_pvm" in decision.reason


@pytest.mark.parametrize("vendor", ["kvm_intel", "kvm_amd"])
def test_hardware_kvm_is_used(tmp_path, kvm_device, vendor):
    (tmp_path / vendor).mkdir()
    assert accel.detect(Settings(accel="auto"), sys_module=tmp_path).kind == "kvm"


def test_no_device_means_tcg(tmp_path, kvm_device):
    kvm_device["usable"] = False
    (tmp_path / "kvm_intel").mkdir()
    assert accel.detect(Settings(accel="auto"), sys_module=tmp_path).kind == "tcg"


def test_forcing_tcg_wins_over_hardware(tmp_path, kvm_device):
    (tmp_path / "kvm_intel").mkdir()
    assert accel.detect(Settings(accel="tcg"), sys_module=tmp_path).kind == "tcg"


def test_forcing_kvm_without_a_device_is_a_clear_error(tmp_path, kvm_device):
    kvm_device["usable"] = False
    with pytest.raises(VmmError, match="/dev/kvm"):
        accel.detect(Settings(accel="kvm"), sys_module=tmp_path)


def test_this_machine_is_detected_as_tcg_when_it_has_kvm_pvm():
    from pathlib import Path

    if not Path("/sys/module/kvm_pvm").exists() or Path("/sys/module/kvm_intel").exists():
        pytest.skip("only meaningful on a kvm_pvm host")
    assert accel.detect(Settings(accel="auto")).kind == "tcg"
