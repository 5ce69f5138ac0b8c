"""``ember template build NAME --from-oci REF`` through the daemon: progress streamed, image config shown."""

from __future__ import annotations

from pathlib import Path

from e2e_support import Daemon, SandboxFactory, run_cli

from ember.client import Sandbox
from oci_images import busybox_image


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
