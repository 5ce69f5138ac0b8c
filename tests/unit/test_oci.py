"""OCI images, the parts without a VM: documents, references, layers onto a tree, the token flow."""

from __future__ import annotations

import base64
import fcntl
import gzip
import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest

from ember.images.errors import ImageRejected
from ember.images.oci import remove_unused_images
from ember.images.oci.layers import ImageTree, safe_parts, unpack_layer
from ember.images.oci.manifest import choose_manifest, parse_config, parse_descriptor, parse_manifest
from ember.images.oci.registry import (
    open_registry,
    parse_challenge,
    parse_reference,
    scheme_for,
    stored_credentials,
)
from ember.images.oci.sources import open_local
from ember.protocol.codes import ErrorCode
from ember.settings import Settings
from oci_images import LayerEntries, digest_of, write_layout

DIGEST = "sha256:" + "0" * 64


def _code(exc: pytest.ExceptionInfo[ImageRejected]) -> ErrorCode:
    return exc.value.code


# ---------------------------------------------------------------- documents


def test_config_keeps_env_workdir_user_and_command() -> None:
    config = parse_config(
        {
            "os": "linux",
            "architecture": "amd64",
            "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
            "config": {
                "Env": ["PATH=/bin", "EMPTY=", "WITH_EQUALS=a=b"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
                "Entrypoint": ["python3"],
                "Cmd": ["app.py"],
            },
        }
    )
    assert config.env == {"PATH": "/bin", "EMPTY": "", "WITH_EQUALS": "a=b"}
    assert (config.workdir, config.user, config.command) == ("/srv", "1000:1000", ("python3", "app.py"))


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"architecture": "arm64"}, "linux/arm64", ErrorCode.IMAGE_UNSUPPORTED),
        ({"config": {"Env": ["NOVALUE"]}}, "config.config.Env[0]", ErrorCode.IMAGE_INVALID),
        ({"config": {"WorkingDir": "relative"}}, "config.config.WorkingDir", ErrorCode.IMAGE_INVALID),
        ({"config": {"Cmd": "sh -c x"}}, "config.config.Cmd", ErrorCode.IMAGE_INVALID),
        ({"rootfs": {"type": "layers", "diff_ids": ["md5:abc"]}}, "diff_ids[0]", ErrorCode.IMAGE_UNSUPPORTED),
    ],
)
def test_a_bad_config_names_its_field(change: dict[str, object], field: str, code: ErrorCode) -> None:
    document = {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}}
    with pytest.raises(ImageRejected, match=re.escape(field)) as caught:
        parse_config(document | change)
    assert _code(caught) is code


def test_manifest_refuses_an_unknown_layer_type_by_index() -> None:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": DIGEST, "size": 1}
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 2},
        "layers": [layer | {"mediaType": "application/vnd.oci.image.layer.v1.tar"}, layer],
    }
    with pytest.raises(ImageRejected, match=r"layers\[1\]\.mediaType .*zstd") as caught:
        parse_manifest(manifest)
    assert _code(caught) is ErrorCode.IMAGE_UNSUPPORTED


def test_an_index_is_narrowed_to_linux_amd64_or_a_tag() -> None:
    def entry(arch: str, tag: str) -> dict[str, object]:
        return {
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST, "size": 1,
            "platform": {"os": "linux", "architecture": arch},
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }  # fmt: skip

    manifests = [parse_descriptor(entry(arch, tag), "m") for arch, tag in (("arm64", "a"), ("amd64", "b"))]
    assert choose_manifest(manifests, "index").platform == ("linux", "amd64")
    with pytest.raises(ImageRejected, match="no image tagged 'c'") as caught:
        choose_manifest(manifests, "index", tag="c")
    assert _code(caught) is ErrorCode.IMAGE_NOT_FOUND
    with pytest.raises(ImageRejected, match="no linux/amd64"):
        choose_manifest(manifests[:1], "index")


def test_references_read_as_docker_reads_them() -> None:
    assert str(parse_reference("127.0.0.1:5000/team/app:v1")) == "127.0.0.1:5000/team/app:v1"
    hub = parse_reference("alpine")
    assert (hub.registry, hub.repository, hub.target) == ("registry-1.docker.io", "library/alpine", "latest")
    pinned = parse_reference(f"localhost/app@{DIGEST}")
    assert (pinned.registry, pinned.target) == ("localhost", DIGEST)
    with pytest.raises(ImageRejected) as caught:
        parse_reference("Not A Reference!")
    assert _code(caught) is ErrorCode.IMAGE_NOT_FOUND
    assert scheme_for("127.0.0.1:5000", ()) == "http" and scheme_for("[::1]:5000", ()) == "http"
    assert scheme_for("registry.example:5000", ()) == "https"
    assert scheme_for("registry.example:5000", ("registry.example:5000",)) == "http"


# ---------------------------------------------------------------- layers onto a tree


def _apply(tree: ImageTree, layer: LayerEntries, what: str = "layer 1/1") -> None:
    data = layer.tar()
    compressed = gzip.compress(data)
    unpack_layer(tree, io.BytesIO(compressed), "gzip", what, digest_of(data), digest_of(compressed))


def test_names_that_leave_the_root_are_refused() -> None:
    assert safe_parts("./usr/bin/../lib/x", "l") == ["usr", "lib", "x"]
    assert safe_parts("/etc/passwd", "l") == ["etc", "passwd"]
    for name in ("../etc/passwd", "a/../../b", "./.."):
        with pytest.raises(ImageRejected) as caught:
            safe_parts(name, "l")
        assert _code(caught) is ErrorCode.IMAGE_UNSAFE_PATH


def test_whiteouts_and_opaque_directories_hide_the_layers_below_only(tmp_path: Path) -> None:
    tree = ImageTree(tmp_path / "root", 1 << 30)
    (tmp_path / "root").mkdir()
    lower = LayerEntries()
    lower.file("etc/gone", b"x")
    lower.file("etc/kept", b"x")
    lower.file("opt/dir/old", b"x")
    lower.file("opt/dir/sub/older", b"x")
    _apply(tree, lower)
    upper = LayerEntries()
    upper.file("opt/dir/new", b"n")  # before the opaque marker: this layer's own, kept
    upper.file("opt/dir/.wh..wh..opq", b"")
    upper.file("opt/dir/sub/newer", b"n")
    upper.file("etc/.wh.gone", b"")
    upper.file("etc/.wh.never-existed", b"")
    _apply(tree, upper)
    root = tmp_path / "root"
    assert sorted(os.listdir(root / "etc")) == ["kept"]
    assert sorted(os.listdir(root / "opt/dir")) == ["new", "sub"]
    assert os.listdir(root / "opt/dir/sub") == ["newer"]


def test_symlinks_are_followed_inside_the_root_never_out_of_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    tree = ImageTree(root, 1 << 30)
    lower = LayerEntries()
    lower.symlink("escape", str(outside))  # absolute: the image's own /…/outside
    lower.symlink("up", "../../../..")
    _apply(tree, lower)
    upper = LayerEntries()
    upper.file("escape/pwned", b"x")
    upper.file("up/etc/also", b"x")
    _apply(tree, upper)
    assert not outside.exists()
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"
    assert (root / "etc/also").exists()
    assert os.readlink(root / "escape") == str(outside)  # kept as the image has it


def test_an_entry_never_writes_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    tree = ImageTree(root, 1 << 30)
    lower = LayerEntries()
    lower.symlink("etc-file", str(victim))
    _apply(tree, lower)
    upper = LayerEntries()
    upper.file("etc-file", b"replaced")
    _apply(tree, upper)
    assert victim.read_bytes() == b"host file"
    assert (root / "etc-file").read_bytes() == b"replaced" and not (root / "etc-file").is_symlink()


def test_hard_links_out_of_the_root_are_refused(tmp_path: Path) -> None:
    tree = ImageTree(tmp_path, 1 << 30)
    layer = LayerEntries()
    layer.hardlink("etc/copy", "../../etc/shadow")
    with pytest.raises(ImageRejected, match="etc/copy") as caught:
        _apply(tree, layer)
    assert _code(caught) is ErrorCode.IMAGE_UNSAFE_PATH


def test_a_layer_over_the_limit_is_refused_by_name(tmp_path: Path) -> None:
    tree = ImageTree(tmp_path, 64 << 10)
    layer = LayerEntries()
    layer.file("big", b"\0" * (128 << 10))
    with pytest.raises(ImageRejected, match="layer 3/4") as caught:
        _apply(tree, layer, "layer 3/4")
    assert _code(caught) is ErrorCode.IMAGE_TOO_LARGE


def test_a_layer_whose_tar_is_not_its_diff_id_is_refused(tmp_path: Path) -> None:
    layer = LayerEntries()
    layer.file("a", b"a")
    data = layer.tar()
    with pytest.raises(ImageRejected, match="diff_ids") as caught:
        unpack_layer(ImageTree(tmp_path, 1 << 30), io.BytesIO(data), "", "layer 1/1", DIGEST)
    assert _code(caught) is ErrorCode.IMAGE_DIGEST_MISMATCH


def test_a_layout_reads_back_its_config(tmp_path: Path) -> None:
    layer = LayerEntries()
    layer.file("hello", b"hi")
    layout = write_layout(tmp_path / "image", [layer.tar()], {"Env": ["A=1"], "User": "nobody"}, tag="v1")
    with open_local(f"{layout.path}:v1") as image:
        assert image.config_digest == layout.config_digest
        assert (image.config.env, image.config.user) == ({"A": "1"}, "nobody")
        assert [layer.what for layer in image.layers] == [f"layer 1/1 ({image.layers[0].digest[:19]})"]
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(os.urandom(2048))
    with pytest.raises(ImageRejected, match=r"corrupt\.tar") as caught:
        open_local(str(corrupt)).__enter__()
    assert _code(caught) is ErrorCode.IMAGE_INVALID


# ---------------------------------------------------------------- the registry's token flow


def _registry(token_ok: bool, seen: list[httpx.Request]) -> httpx.MockTransport:
    """A registry that wants a Bearer token from its realm, which wants Basic credentials."""
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config.encode()),
                "size": len(config),
            },
            "layers": [],
        }
    )
    good = "Basic " + base64.b64encode(b"me:pw").decode()

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/token":
            if request.headers.get("Authorization") != good or not token_ok:
                return httpx.Response(401)
            assert request.url.params["scope"] == "repository:team/app:pull"
            return httpx.Response(200, json={"access_token": "T0KEN"})
        if request.headers.get("Authorization") != "Bearer T0KEN":
            challenge = 'Bearer realm="http://auth.test/token",service="reg",scope="repository:team/app:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=manifest, headers={"Content-Type": "application/json"})
        return httpx.Response(200, content=config)

    return httpx.MockTransport(handle)


def test_the_token_flow_fetches_a_token_once_and_reuses_it() -> None:
    seen: list[httpx.Request] = []
    with open_registry(
        "reg.test/team/app:v1", credentials=("me", "pw"), transport=_registry(True, seen)
    ) as image:
        assert image.layers == ()
    paths = [request.url.path for request in seen]
    assert paths == ["/v2/team/app/manifests/v1", "/token", "/v2/team/app/manifests/v1", "/v2/team/app/blobs/"
                     + image.config_digest]  # fmt: skip
    assert parse_challenge('Bearer realm="r",service="s"') == ("bearer", {"realm": "r", "service": "s"})


def test_refused_credentials_are_registry_unauthorized() -> None:
    for credentials in (("me", "wrong"), None):
        with pytest.raises(ImageRejected, match="refused") as caught:
            open_registry(
                "reg.test/team/app", credentials=credentials, transport=_registry(True, [])
            ).__enter__()
        assert _code(caught) is ErrorCode.REGISTRY_UNAUTHORIZED


def test_stored_credentials_come_from_docker_login(tmp_path: Path) -> None:
    auth = base64.b64encode(b"user:pa:ss").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg.test:5000": {"auth": auth}}}))
    assert stored_credentials("reg.test:5000", tmp_path) == ("user", "pa:ss")
    assert stored_credentials("other.test", tmp_path) is None


# ---------------------------------------------------------------- imported images, collected


def test_images_no_record_names_go_and_the_others_stay(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    for name in ("image-kept", "image-unused", "image-building"):
        (settings.oci_dir / name).mkdir(parents=True)
        (settings.oci_dir / name / "rootfs.ext4").write_bytes(b"ext4")
    (settings.oci_dir / ".tmp-image-dead/out").mkdir(parents=True)  # an import that died
    (settings.oci_dir / ".locks").mkdir()
    building = os.open(settings.oci_dir / ".locks/image-building.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(building, fcntl.LOCK_EX)  # being built again right now
    try:
        in_use = [
            "/the/data/dir/spelt/otherwise/oci-images/image-kept/rootfs.ext4",  # matched by name
            str(tmp_path / "images/rootfs-0123/rootfs.ext4"),  # Ember's own image: never here
        ]
        removed = remove_unused_images(settings, in_use)
    finally:
        os.close(building)
    assert removed == ["image-unused"]
    assert sorted(p.name for p in settings.oci_dir.iterdir()) == [".locks", "image-building", "image-kept"]
