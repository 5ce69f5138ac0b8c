"""Reading the destination's name off a connection (TLS SNI, HTTP Host) and the package hosts' configs."""

from __future__ import annotations

import ssl
from pathlib import Path

from ember.network.packages import PackageSources, apt_urls, pip_settings, url_hosts
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


def test_pip_settings_take_each_option_from_the_section_pip_prefers() -> None:
    listing = (
        ":env:.index-url='http://env.example/simple'\n"
        "global.cert='/x'\n"
        "global.extra-index-url='file:///x http://b.example/s'\n"
        "global.index-url='https://mirror.example/simple'\n"
        "global.trusted-host='env.example b.example:8080'\n"
        "install.extra-index-url='http://c.example/s'\n"
    )
    assert pip_settings(listing) == {
        "index-url": ["http://env.example/simple"],
        "extra-index-url": ["http://c.example/s"],
        "trusted-host": ["env.example", "b.example:8080"],
    }
    assert pip_settings("global.cert='/x'\n") == {}


def test_package_sources_name_every_host_they_fetch_from() -> None:
    sources = PackageSources(
        pip_index_url="http://index.example/simple",
        pip_trusted_hosts=("index.example", "trusted.example:8080"),
        npm_registry="https://npm.example/",
        debian_mirror="http://deb.example/debian",
        other_urls=("http://security.example/debian-security", "/opt/wheels", "https://pypi.org/simple"),
    )
    assert sources.hosts() == (
        "index.example",
        "npm.example",
        "deb.example",
        "trusted.example",
        "security.example",
        "pypi.org",
    )
    assert PackageSources().hosts() == ()
    assert url_hosts(
        ["http://[::1", "http:///no-host", "ftp://deb.example/", "https://ok.example:8443/x"]
    ) == ["ok.example"]


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
