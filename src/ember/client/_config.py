"""Where the daemon is and which key to send: arguments first, then the environment.

URL: ``base_url`` argument, else ``EMBER_URL``, else http://127.0.0.1:7070. Key:
``api_key`` argument, else ``EMBER_API_KEY``, else the key saved for that URL in the
credentials file. Only when nothing named a URL may the SDK start a local daemon.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ember.client._credentials import load_key, normalize_url

DEFAULT_URL = "http://127.0.0.1:7070"
DEFAULT_REQUEST_TIMEOUT_S = 60.0


def tls_verify(base_url: str) -> ssl.SSLContext | bool:
    """How the daemon's certificate is verified: for https, one verifying TLS context per
    process and CA setting (loading the CA bundle costs tens of milliseconds, which every
    ``Sandbox(...)`` would otherwise pay again), trusting ``SSL_CERT_FILE`` (or
    ``SSL_CERT_DIR``) when set: a daemon with a certificate of your own CA. Plain http has no
    certificate to verify, and skips building a context (~60 ms of every CLI command)."""
    if not base_url.startswith("https:"):
        return False
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx  # here: a command on a plain-http daemon never needs it (ember.client._oneshot)

    return httpx.create_ssl_context()


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str | None
    #: Limit for ordinary requests; calls that wait for work in the sandbox have no read limit.
    request_timeout_s: float | None
    #: Nothing named the daemon's address, so the SDK may start one there when none answers.
    autostart: bool

    def after_autostart(self, api_key: str | None) -> ClientConfig:
        """The configuration once a local daemon was started (or found) for this URL."""
        return replace(self, api_key=api_key or self.api_key, autostart=False)


def resolve_config(
    api_key: str | None = None,
    base_url: str | None = None,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    env = os.environ if environ is None else environ
    named_url = base_url or env.get("EMBER_URL") or None
    url = normalize_url(named_url or DEFAULT_URL)
    key = api_key or env.get("EMBER_API_KEY") or load_key(url)
    return ClientConfig(
        base_url=url, api_key=key, request_timeout_s=request_timeout, autostart=named_url is None
    )
