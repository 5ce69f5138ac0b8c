"""Who calls over HTTP: each client presents an Ember API key, and the tools act with it.

``Authorization: Bearer <Ember API key>`` is checked against the daemon (a key it
refuses gets HTTP 401), so the MCP endpoint gives nobody more than the daemon
would give the same key, and each key sees only its own sandboxes. An MCP session
stays bound to the key that opened it (the SDK refuses it to any other). Over
stdio the server's own key (EMBER_API_KEY, or the saved local one) is used.
"""

from __future__ import annotations

import hashlib
import logging
import time

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from ember.client import AsyncSandbox
from ember.client._config import resolve_config
from ember.errors import AuthenticationError, EmberError, PermissionDeniedError

logger = logging.getLogger(__name__)

#: How long a key the daemon accepted is trusted without asking again (a revoked key
#: still fails at the daemon on its next sandbox call).
VERIFIED_FOR_S = 60.0


class EmberKeyVerifier:
    """The MCP SDK's ``TokenVerifier``: a bearer token is good if the daemon accepts it as an API key."""

    def __init__(self, base_url: str | None = None) -> None:
        self._base_url = base_url
        self._verified_until: dict[str, float] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        principal = hashlib.sha256(token.encode()).hexdigest()[:32]
        if self._verified_until.get(principal, 0.0) < time.monotonic():
            try:
                await AsyncSandbox.list(api_key=token, base_url=self._base_url)
            except (AuthenticationError, PermissionDeniedError):
                return None
            except EmberError as exc:
                logger.warning("could not check an API key with the Ember daemon: %s", exc)
                return None
            self._verified_until[principal] = time.monotonic() + VERIFIED_FOR_S
        return AccessToken(token=token, client_id=principal, subject=principal, scopes=[])


def auth_settings(base_url: str | None, resource_url: str) -> AuthSettings:
    """Bearer auth for the HTTP endpoint; the keys' issuer is the Ember daemon (``ember keys create``)."""
    return AuthSettings(
        issuer_url=resolve_config(base_url=base_url).base_url,
        resource_server_url=resource_url,
        validate_token_resource=False,  # Ember keys name no audience: the daemon's answer is the check
    )


def caller_key() -> str | None:
    """The API key the current HTTP request was authenticated with; None over stdio."""
    token = get_access_token()
    return None if token is None else token.token
