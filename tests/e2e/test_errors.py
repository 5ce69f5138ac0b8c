"""Typed errors through the SDK: each failure raises its class, with its code, and changes nothing."""

from __future__ import annotations

import pytest
from e2e_support import Daemon, free_port

from ember import (
    AuthenticationError,
    DaemonUnreachableError,
    InvalidRequestError,
    PathNotFoundError,
    ProcessNotFoundError,
    Sandbox,
    SandboxNotFoundError,
)


def test_unknown_sandbox_id_is_sandbox_not_found(daemon: Daemon) -> None:
    with pytest.raises(SandboxNotFoundError) as caught:
        Sandbox.connect("no-such-sandbox", base_url=daemon.url, api_key=daemon.api_key)
    assert caught.value.code == "sandbox_not_found"


def test_bad_key_is_an_authentication_error(daemon: Daemon) -> None:
    with pytest.raises(AuthenticationError) as caught:
        Sandbox.list(base_url=daemon.url, api_key="not-a-key-of-this-daemon")
    assert caught.value.code == "unauthorized"


def test_invalid_parameters_raise_and_create_nothing(daemon: Daemon) -> None:
    before = Sandbox.list(all=True, base_url=daemon.url, api_key=daemon.api_key)
    with pytest.raises(InvalidRequestError) as caught:
        Sandbox(vcpus=0, base_url=daemon.url, api_key=daemon.api_key)
    assert caught.value.code == "invalid_request"
    after = Sandbox.list(all=True, base_url=daemon.url, api_key=daemon.api_key)
    assert [info.id for info in after] == [info.id for info in before]


def test_nothing_listening_is_daemon_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DaemonUnreachableError, match="ember serve") as caught:
        Sandbox.list(base_url=url, api_key="whatever-key-0123456789")
    assert url in caught.value.message


def test_errors_inside_the_sandbox_are_typed(shared_sandbox: Sandbox) -> None:
    with pytest.raises(PathNotFoundError):
        shared_sandbox.files.read("/app/does/not/exist")
    with pytest.raises(ProcessNotFoundError):
        shared_sandbox.commands.connect(999_999)
