"""Sandbox shapes are checked against the rules and the host before any VM exists."""

from __future__ import annotations

import os

import pytest

from ember.engine import limits
from ember.engine.sandbox import SandboxConfig
from ember.errors import InvalidRequestError, ResourceExhaustedError


@pytest.mark.parametrize(
    "config",
    [
        SandboxConfig(vcpus=0),
        SandboxConfig(vcpus=9),
        SandboxConfig(vcpus=True),
        SandboxConfig(vcpus="2"),  # type: ignore[arg-type]
        SandboxConfig(memory_mib=64),
        SandboxConfig(memory_mib=9000),
        SandboxConfig(disk_mib=1),
        SandboxConfig(env={"1BAD": "x"}),
        SandboxConfig(env={"A": 1}),  # type: ignore[dict-item]
        SandboxConfig(env={"A": "x\0y"}),
        SandboxConfig(metadata={"k": ["v"]}),  # type: ignore[dict-item]
    ],
)
def test_invalid_shapes_are_refused(config):
    with pytest.raises(InvalidRequestError):
        limits.validate(config)


def test_more_vcpus_than_the_host_has_are_refused(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(InvalidRequestError, match="only 2 CPUs"):
        limits.validate(SandboxConfig(vcpus=4))


def test_memory_beyond_what_the_host_has_free_is_refused(monkeypatch):
    monkeypatch.setattr(limits, "available_memory_mib", lambda: 1000)
    with pytest.raises(ResourceExhaustedError, match="available"):
        limits.validate(SandboxConfig(memory_mib=2048))


def test_a_good_shape_passes_unchanged():
    config = SandboxConfig(vcpus=1, memory_mib=256, env={"MODE": "test"}, metadata={"k": "v"})
    assert limits.validate(config) is config
