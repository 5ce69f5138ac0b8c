"""Templates from OCI images through the daemon: the CLI from a layout, the SDK from a registry
with token auth, each hearing the build's stages as they stream."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from e2e_support import Daemon, SandboxFactory, run_cli

from ember import errors
from ember.client import Sandbox, build_template
from oci_images import busybox_image
from registry_lab import push, token_registry


def test_cli_builds_a_template_from_an_oci_layout_and_shows_its_stages(
    daemon: Daemon, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    layout = busybox_image(tmp_path / "busybox")
    built = run_cli(daemon, "template", "build", "cli-busybox", "--from-oci", f"{layout.path}:busybox",
                    "--run", "echo made-by-a-step > /work/step.txt", timeout_s=600)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    for stage in (
        "unpacking layer 1/2",
        "writing root filesystem image",
        "booting the image",
        "snapshotting",
    ):
        assert stage in built.stderr, built.stderr
    assert "template cli-busybox saved" in built.stderr
    try:
        [info] = [t for t in Sandbox.list_templates(base_url=daemon.url, api_key=daemon.api_key)
                  if t.name == "cli-busybox"]  # fmt: skip
        assert info.image is not None and info.image.default_command == ["sh"]
        assert info.image.workdir == "/work" and info.image.env["IMAGE_KIND"] == "busybox"
        sandbox = sandbox_factory(template="cli-busybox", vcpus=info.vcpus, memory_mb=info.memory_mb)
        result = sandbox.commands.run("cat step.txt; echo $IMAGE_KIND")
        assert result.stdout == "made-by-a-step\nbusybox\n", result.stderr
    finally:
        Sandbox.delete_template("cli-busybox", base_url=daemon.url, api_key=daemon.api_key)


@pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
    reason="needs Debian's docker-registry and skopeo (./setup installs them)",
)
def test_sdk_builds_a_template_from_a_registry_hearing_each_stage(daemon: Daemon, tmp_path: Path) -> None:
    layout = busybox_image(tmp_path / "busybox", kind="pulled")
    (tmp_path / "registry").mkdir()
    connection = {"base_url": daemon.url, "api_key": daemon.api_key}
    stages: list[str] = []
    before = _images(daemon)
    with token_registry(tmp_path / "registry") as registry:
        reference = push(layout.path, layout.tag, registry, "test/busybox")
        with pytest.raises(errors.RegistryUnauthorizedError):
            build_template("sdk-refused", [], from_oci=reference, registry_auth=(registry.user, "wrong"),
                           **connection)  # fmt: skip
        info = build_template("sdk-pulled", [], vcpus=1, from_oci=reference, on_step=stages.append,
                              registry_auth=(registry.user, registry.password), **connection)  # fmt: skip
    try:
        [image] = _images(daemon) - before
        expected = [
            f"reading {reference}",
            "pulling and unpacking layer 1/2",
            "pulling and unpacking layer 2/2",
            "writing root filesystem image",
            "booting the image",
            "snapshotting it, REPL warm",
        ]
        heard = iter(stages)  # each in this order, among others
        assert all(any(stage.startswith(prefix) for stage in heard) for prefix in expected), stages
        assert info.image is not None and info.image.reference == reference
        assert info.image.digest.startswith("sha256:") and info.image.env["IMAGE_KIND"] == "pulled"
        shape = {"vcpus": info.vcpus, "memory_mb": info.memory_mb}
        with Sandbox(template="sdk-pulled", **shape, **connection) as sandbox:
            Sandbox.delete_template("sdk-pulled", **connection)
            assert image.exists(), "the image went while a sandbox ran from it"
            assert sandbox.commands.run("echo $IMAGE_KIND $(pwd)").stdout == "pulled /work\n"
    finally:
        with contextlib.suppress(errors.TemplateNotFoundError):
            Sandbox.delete_template("sdk-pulled", **connection)
    assert "sdk-refused" not in {t.name for t in Sandbox.list_templates(**connection)}
    assert not image.exists(), "the image outlived its template and its last sandbox"


def _images(daemon: Daemon) -> set[Path]:
    return set((daemon.data_dir / "oci-images").glob("image-*"))
