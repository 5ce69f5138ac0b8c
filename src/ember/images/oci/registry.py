"""Pulling an image from a registry over the distribution API (v2), with its token flow.

A registry that wants credentials answers 401 with ``WWW-Authenticate``:
``Bearer realm=...,service=...,scope=...`` sends the client to that realm for a
token (with Basic credentials when it has some), which it then presents as
``Authorization: Bearer``; ``Basic`` wants the credentials on every request.
`RegistryAuth` does both as an httpx auth flow. Credentials come from the caller
or from ``~/.docker/config.json`` (``$DOCKER_CONFIG``), as ``docker login`` wrote
them. HTTPS always, except to loopback and to the hosts named insecure
(``EMBER_INSECURE_REGISTRIES``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from ember.images.errors import ImageRejected
from ember.images.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MAX_DOCUMENT_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    check_digest,
    choose_manifest,
    load_json,
    parse_index,
    parse_manifest,
)
from ember.images.oci.sources import Image, check_blob, image_from
from ember.protocol.codes import ErrorCode

DEFAULT_REGISTRY = "registry-1.docker.io"
_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_TIMEOUT = httpx.Timeout(30.0, read=120.0)
Credentials = tuple[str, str]


@dataclass(frozen=True)
class Reference:
    """``registry/repository:tag`` or ``...@sha256:...``, split and checked."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def target(self) -> str:
        """What the manifest is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        pinned = f"@{self.digest}" if self.digest else ""
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.registry}/{self.repository}{tag}{pinned}"


def parse_reference(text: str) -> Reference:
    """A registry reference as ``docker pull`` reads it (``alpine`` is Docker Hub's ``library/alpine``)."""
    rest, _, digest = text.partition("@")
    if digest:
        check_digest(digest, f"reference {text!r}")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DEFAULT_REGISTRY, rest
        if "/" not in path:
            path = f"library/{path}"
    repository, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if not _REPOSITORY.fullmatch(repository) or (colon and not _TAG.fullmatch(tag)):
        raise ImageRejected(
            f"{text!r} is neither a file here nor a registry reference (HOST[:PORT]/REPOSITORY[:TAG])",
            ErrorCode.IMAGE_NOT_FOUND,
        )
    return Reference(registry, repository, tag or (None if digest else "latest"), digest or None)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ``("bearer", {"realm": ..., "service": ...})``."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


class RegistryAuth(httpx.Auth):
    """The registry's 401 challenge answered: a Bearer token from its realm, or Basic credentials.

    The token is kept and sent with the next requests (the same repository and scope).
    Only the token service's answer is read here: a blob's body streams to its reader.
    """

    def __init__(self, credentials: Credentials | None) -> None:
        self._credentials = credentials
        self._authorization: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._authorization is not None:
            request.headers["Authorization"] = self._authorization
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer" and "realm" in params:
            query = {key: params[key] for key in ("service", "scope") if key in params}
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self._credentials is not None:
                token_request.headers["Authorization"] = _basic(self._credentials)
            token_response = yield token_request
            token_response.read()
            self._authorization = "Bearer " + _token_of(token_response, params["realm"])
        elif scheme == "basic" and self._credentials is not None:
            self._authorization = _basic(self._credentials)
        else:
            return  # nothing to answer the challenge with: the 401 stands
        request.headers["Authorization"] = self._authorization
        yield request


def _basic(credentials: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def _token_of(response: httpx.Response, realm: str) -> str:
    if response.status_code in (401, 403):
        raise ImageRejected(
            f"the registry's token service {realm} refused the credentials (HTTP {response.status_code}); "
            "check them (docker login writes ~/.docker/config.json)",
            ErrorCode.REGISTRY_UNAUTHORIZED,
        )
    if response.is_error:
        raise ImageRejected(
            f"the registry's token service {realm} answered HTTP {response.status_code}",
            ErrorCode.REGISTRY_ERROR,
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise ImageRejected(f"the registry's token service {realm} sent no token", ErrorCode.REGISTRY_ERROR)
    return token


def stored_credentials(registry: str, config_dir: Path | None = None) -> Credentials | None:
    """The credentials ``docker login`` stored for `registry`, if any."""
    directory = config_dir or Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        auths = json.loads((directory / "config.json").read_text()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    names = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DEFAULT_REGISTRY:
        names.append("https://index.docker.io/v1/")
    for name in names:
        encoded = (auths.get(name) or {}).get("auth") if isinstance(auths.get(name), dict) else None
        if isinstance(encoded, str):
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                return None
            return (user, password)
    return None


def scheme_for(registry: str, insecure: tuple[str, ...]) -> str:
    """http for loopback and the registries named insecure; https for every other."""
    host = (
        registry.rsplit(":", 1)[0].strip("[]")
        if registry.count(":") <= 1 or registry.startswith("[")
        else registry
    )
    if registry in insecure or host in insecure or host == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(host).is_loopback else "https"
    except ValueError:
        return "https"


@contextmanager
def open_registry(
    text: str,
    *,
    credentials: Credentials | None = None,
    insecure: tuple[str, ...] = (),
    transport: httpx.BaseTransport | None = None,
) -> Iterator[Image]:
    """The image `text` names in its registry; layers stream from it as they are unpacked."""
    reference = parse_reference(text)
    base = f"{scheme_for(reference.registry, insecure)}://{reference.registry}/v2/{reference.repository}"
    auth = RegistryAuth(credentials or stored_credentials(reference.registry))
    with httpx.Client(auth=auth, timeout=_TIMEOUT, follow_redirects=True, transport=transport) as client:
        api = _Api(client, base, str(reference))
        document, media_type = api.manifest(reference.target, reference.digest)
        if media_type in INDEX_TYPES:
            chosen = choose_manifest(parse_index(document, "the index"), f"{reference}'s index")
            document, media_type = api.manifest(chosen.digest, chosen.digest)
        manifest = parse_manifest(document)
        config_bytes = api.blob_bytes(manifest.config.digest, "the config")
        yield image_from(str(reference), manifest, config_bytes, api.opener)


class _Api:
    def __init__(self, client: httpx.Client, base: str, name: str) -> None:
        self.client = client
        self.base = base
        self.name = name

    def manifest(self, target: str, digest: str | None) -> tuple[Any, str]:
        with self._get(f"/manifests/{target}", f"manifest {target}", accept=_ACCEPT) as response:
            data = _read_limited(response, f"{self.name}'s manifest")
        if digest is not None:
            check_blob(data, digest, None, f"{self.name}'s manifest")
        document = load_json(data, f"{self.name}'s manifest")
        media_type = document.get("mediaType") if isinstance(document, dict) else None
        return document, media_type or response.headers.get("Content-Type", "").split(";")[0]

    def blob_bytes(self, digest: str, what: str) -> bytes:
        with self._get(f"/blobs/{digest}", what) as response:
            return _read_limited(response, f"{self.name}: {what}")

    def opener(self, digest: str) -> Callable[[], AbstractContextManager[BinaryIO]]:
        @contextmanager
        def open_blob() -> Iterator[BinaryIO]:
            with self._get(f"/blobs/{digest}", f"blob {digest}") as response:
                yield _StreamReader(response.iter_raw(1 << 20))  # type: ignore[misc]

        return open_blob

    @contextmanager
    def _get(self, path: str, what: str, accept: str | None = None) -> Iterator[httpx.Response]:
        headers = {"Accept": accept} if accept else {}
        try:
            with self.client.stream("GET", self.base + path, headers=headers) as response:
                _check(response, self.name, what)
                yield response
        except httpx.HTTPError as exc:
            raise ImageRejected(
                f"cannot read {what} of {self.name} from its registry ({type(exc).__name__}: {exc})",
                ErrorCode.REGISTRY_ERROR,
            ) from exc


def _check(response: httpx.Response, name: str, what: str) -> None:
    if response.is_success:
        return
    response.read()
    detail = _registry_message(response)
    if response.status_code in (401, 403):
        raise ImageRejected(
            f"the registry refused {what} of {name} (HTTP {response.status_code}{detail}); "
            "give credentials (docker login writes ~/.docker/config.json)",
            ErrorCode.REGISTRY_UNAUTHORIZED,
        )
    if response.status_code == 404:
        raise ImageRejected(f"{name}: the registry has no {what}{detail}", ErrorCode.IMAGE_NOT_FOUND)
    raise ImageRejected(
        f"the registry answered HTTP {response.status_code} for {what} of {name}{detail}",
        ErrorCode.REGISTRY_ERROR,
    )


def _registry_message(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return ": " + "; ".join(str(e.get("message") or e.get("code")) for e in errors[:3]) if errors else ""
    except (ValueError, AttributeError):
        return ""


def _read_limited(response: httpx.Response, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ImageRejected(f"{what} is more than {MAX_DOCUMENT_BYTES} bytes: not a manifest or config")
    return bytes(data)


class _StreamReader:
    """A file-like ``read(size)`` over an iterator of byte chunks (what tarfile and gzip read from)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()  # deleting from its front is cheap: no copy of the rest

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
