"""Where the SDK finds the daemon and its key, and the credentials file that keeps local keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ember.client._config import DEFAULT_URL, resolve_config
from ember.client._credentials import credentials_path, load_key, new_key, save_key
from ember.client._errors import DaemonUnreachableError
from ember.client._local import _loopback_address


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EMBER_URL", raising=False)
    monkeypatch.delenv("EMBER_API_KEY", raising=False)
    return tmp_path / "config"


def test_credentials_live_under_xdg_config_home(config_home: Path) -> None:
    assert credentials_path() == config_home / "ember" / "credentials"


def test_credentials_file_is_readable_by_its_user_only() -> None:
    path = save_key(DEFAULT_URL, "k1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    save_key("http://127.0.0.1:9000", "k2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (load_key(DEFAULT_URL), load_key("http://127.0.0.1:9000/")) == ("k1", "k2")


def test_a_damaged_credentials_file_holds_no_key() -> None:
    credentials_path().parent.mkdir(parents=True)
    credentials_path().write_text("{not json")
    assert load_key(DEFAULT_URL) is None
    save_key(DEFAULT_URL, "fresh")
    assert load_key(DEFAULT_URL) == "fresh"


def test_new_keys_are_long_and_distinct() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) >= 40 for key in keys)


def test_defaults_point_at_the_local_daemon_and_allow_autostart() -> None:
    config = resolve_config(environ={})
    assert (config.base_url, config.api_key, config.autostart) == (DEFAULT_URL, None, True)


def test_arguments_win_over_the_environment() -> None:
    environ = {"EMBER_URL": "http://env:1", "EMBER_API_KEY": "env-key"}
    config = resolve_config("arg-key", "http://arg:2/", environ=environ)
    assert (config.base_url, config.api_key, config.autostart) == ("http://arg:2", "arg-key", False)


def test_environment_wins_over_the_credentials_file() -> None:
    save_key("http://env:1", "saved")
    config = resolve_config(environ={"EMBER_URL": "http://env:1", "EMBER_API_KEY": "env-key"})
    assert (config.api_key, config.autostart) == ("env-key", False)


def test_saved_key_is_used_only_for_the_url_it_was_made_for() -> None:
    save_key(DEFAULT_URL, "local-admin")
    assert resolve_config(environ={}).api_key == "local-admin"
    assert resolve_config(environ={"EMBER_URL": "https://remote.example"}).api_key is None


def test_after_autostart_the_key_is_set_and_autostart_is_spent() -> None:
    config = resolve_config(environ={}).after_autostart("started-key")
    assert (config.api_key, config.autostart) == ("started-key", False)


@pytest.mark.parametrize("url", ["https://127.0.0.1:7070", "http://10.0.0.5:7070", "http://example.com"])
def test_only_loopback_http_daemons_are_started_locally(url: str) -> None:
    with pytest.raises(DaemonUnreachableError):
        _loopback_address(url)


def test_loopback_address_is_host_and_port() -> None:
    assert _loopback_address("http://127.0.0.1:7070") == ("127.0.0.1", 7070)
