"""Reading the destination's name off a connection (TLS SNI, HTTP Host) and the package hosts' configs."""

from __future__ import annotations

import ssl
from pathlib import Path

from ember.network.packages import apt_urls, pip_urls, url_hosts
from ember.network.proxy import http_host, tls_server_name


def client_hello(name: str | None) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_tls_server_name_of_a_real_client_hello() -> None:
    assert tls_server_name(client_hello("api.example.com")) == "api.example.com"


def test_tls_without_a_name_or_not_tls_names_nothing() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    assert tls_server_name(b"GET / HTTP/1.1\r\n\r\n") is None
    assert tls_server_name(client_hello("api.example.com")[:60]) is None
    assert tls_server_name(b"") is None


def test_http_host_without_port_and_case() -> None:
    assert http_host(b"GET / HTTP/1.1\r\nHOST: Example.COM:8080\r\nAccept: */*\r\n\r\n") == "example.com"
    assert http_host(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\nHost: late.example.com\r\n") is None
    assert http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n") is None


def test_pip_config_listing_and_defaults() -> None:
    listing = "global.index-url='https://mirror.example/simple'\n:env:.extra-index-url='file:///x http://b.example/s'\n"
    assert url_hosts(pip_urls(listing, "https://pypi.org/simple")) == ["mirror.example", "b.example"]
    assert url_hosts(pip_urls("global.cert='/x'\n", "https://pypi.org/simple\nhttps://files.host")) == [
        "pypi.org",
        "files.host",
    ]


def test_apt_sources_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://deb.example/debian bookworm main\n"
        "deb-src https://src.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "extra.sources").write_text(
        "Types: deb\nURIs: http://one.example/d https://two.example/d\nSuites: x\n"
    )
    hosts = url_hosts(apt_urls(tmp_path))
    assert hosts == ["deb.example", "src.example", "one.example", "two.example"]
