"""``ember e2b-env``: the environment that points E2B's SDKs at this Ember daemon."""

from __future__ import annotations

import shlex

from ember.cli._output import stdout
from ember.client._config import resolve_config
from ember.client._local import ensure_local_daemon, is_healthy
from ember.errors import AgentUnavailableError, AuthenticationError


def e2b_env() -> None:
    """Print the export lines for E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (eval "$(ember e2b-env)")."""
    config = resolve_config()
    key = config.api_key
    if config.autostart:
        key = ensure_local_daemon(config.base_url, key)
    elif not is_healthy(config.base_url):
        raise AgentUnavailableError(f"no Ember daemon answers at {config.base_url}")
    if not key:
        raise AuthenticationError("no API key: set EMBER_API_KEY or create one with `ember keys create`")
    for name, value in (
        ("E2B_API_URL", config.base_url),
        ("E2B_SANDBOX_URL", config.base_url),
        ("E2B_API_KEY", key),
    ):
        stdout.print(f"export {name}={shlex.quote(value)}")
