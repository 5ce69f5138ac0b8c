"""OCI images as templates: imported from a registry (token auth), an archive and a layout, booted.

Two images made in the test (``oci_images``): a Debian-ish one with python3 and
a user, and a busybox-only one without Python. The registry is Debian's
docker-registry on loopback behind a token server of the test's own
(``registry_lab``); the archive is ``docker save``'s format, written by skopeo.
Bad input of each kind fails with its code, leaves no template and writes
nothing outside the build's own directory.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import SandboxFactory
from ember import errors
from ember.engine import SandboxManager
from ember.engine.templates import import_oci
from ember.images import BuildProgress
from ember.images.debian_tree import PACKAGES_FILE
from ember.images.guest import ensure_debian_tree
from ember.settings import Settings
from oci_images import LayerEntries, Layout, busybox_image, debian_image, write_layout
from registry_lab import Registry, docker_archive, push, token_registry

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
    reason="needs Debian's docker-registry and skopeo (./setup installs them)",
)


@dataclass(frozen=True)
class Images:
    debian: Layout
    busybox: Layout
    busybox_archive: Path
    registry: Registry
    debian_reference: str


class Stages(BuildProgress):
    """Records the stages a build went through."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def stage(self, name: str, total: int | None = None) -> None:
        self.names.append(name)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    root = tmp_path_factory.mktemp("oci")
    debian = debian_image(root / "debian")
    busybox = busybox_image(root / "busybox")
    archive = docker_archive(busybox.path, busybox.tag, root / "busybox.tar")
    (root / "registry").mkdir()
    with token_registry(root / "registry") as registry:
        reference = push(debian.path, debian.tag, registry, "test/debian")
        yield Images(debian, busybox, archive, registry, reference)


@pytest.fixture(scope="module")
async def templates(manager: SandboxManager, images: Images) -> AsyncIterator[dict[str, float]]:
    """Both images imported once for the module; build times by name (printed for the report)."""
    timings: dict[str, float] = {}
    credentials = (images.registry.user, images.registry.password)
    for name, reference, kwargs in (
        ("oci-debian", images.debian_reference, {"credentials": credentials}),
        ("oci-busybox", str(images.busybox_archive), {}),
    ):
        started = time.perf_counter()
        await import_oci(manager, name, reference, vcpus=1, memory_mb=512, **kwargs)  # type: ignore[arg-type]
        timings[name] = time.perf_counter() - started
    print(f"\nfirst imports: {timings}")
    yield timings
    for name in ("oci-debian", "oci-busybox"):
        await manager.delete_template(name)


async def test_debian_image_from_registry_keeps_env_workdir_user_and_whiteouts(
    templates: dict[str, float], sandbox_factory: SandboxFactory, manager: SandboxManager
) -> None:
    template = manager.snapshots.template("oci-debian")
    assert template.image["config"]["entrypoint"] == ["python3"]
    assert template.image["config"]["cmd"] == ["-m", "http.server", "8000"]
    assert template.image["digest"].startswith("sha256:")
    sandbox = await sandbox_factory(template="oci-debian")
    shell = await sandbox.commands.run('echo "$GREETING|$(pwd)|$(id -u):$(id -g)|$(whoami)"')
    assert shell.stdout == "hello from oci|/srv/app|1000:1000|app\n", shell.stderr
    layers = await sandbox.commands.run(
        "ls /opt/lower; test -e /etc/doomed.conf && echo doomed-still-there; cat hello.txt"
    )
    assert layers.stdout == "new.txt\nhello from the image\n", layers.stderr
    code = await sandbox.code.run("import os; print(os.getcwd(), os.environ['GREETING'], os.getuid())")
    assert code.error is None, code.error
    assert code.stdout == "/srv/app hello from oci 1000\n"
    # The image's own /usr is untouched: Ember's files are all under /.ember.
    usr = await sandbox.commands.run("ls /usr/bin /usr/sbin /usr/lib; ls -d /.ember/agent /.ember/python")
    assert "ember" not in usr.stdout.split("/.ember/agent")[0], usr.stdout
    assert usr.stdout.endswith("/.ember/agent\n/.ember/python\n"), usr.stdout + usr.stderr


async def test_busybox_image_without_python_runs_commands_files_and_a_terminal(
    templates: dict[str, float], sandbox_factory: SandboxFactory
) -> None:
    sandbox = await sandbox_factory(template="oci-busybox")
    shell = await sandbox.commands.run('echo "$IMAGE_KIND $(pwd) $(id -u)"; test -e /etc/motd || echo gone')
    assert shell.stdout == "busybox /work 0\ngone\n", shell.stderr
    await sandbox.files.write("notes.txt", b"written through the agent\n")
    assert await sandbox.files.read("/work/notes.txt") == b"written through the agent\n"
    assert (await sandbox.commands.run("cat notes.txt")).stdout == "written through the agent\n"
    output = bytearray()
    pid = await sandbox.pty.create(cols=80, rows=24)
    stream = asyncio.create_task(sandbox.pty.stream(pid, output.extend))
    await sandbox.pty.send(pid, b"echo from-the-$((6*7))-terminal; exit\n")
    exit_info = await asyncio.wait_for(stream, 30)
    assert b"from-the-42-terminal" in output and exit_info.exit_code == 0
    with pytest.raises(errors.PythonUnavailableError, match="no python3"):
        await sandbox.code.run("print(1)")


async def test_the_agent_runs_on_debians_python_with_a_trimmed_stdlib(
    templates: dict[str, float], sandbox_factory: SandboxFactory, manager: SandboxManager
) -> None:
    """The agent's interpreter is the one of Ember's own guests (the Debian tree's), not the host's."""
    tree = ensure_debian_tree(manager.settings, BuildProgress())
    packages = dict(line.split("\t")[:2] for line in (tree.parent / PACKAGES_FILE).read_text().splitlines())
    [debian_python] = [version for name, version in packages.items() if re.fullmatch(r"python3\.\d+", name)]
    sandbox = await sandbox_factory(template="oci-busybox")
    assert sandbox.agent_info is not None and debian_python.startswith(sandbox.agent_info.python + "-")
    listing = await sandbox.commands.run("ls /.ember/python/lib /.ember/python/lib/python3*/ | sort -u")
    present = set(listing.stdout.split())
    assert {"ld.so", "libc.so.6", "os.py", "asyncio", "lib-dynload"} <= present, listing.stdout
    dropped = {"test", "lib2to3", "ensurepip", "idlelib", "pydoc_data", "libssl.so.3"}
    assert not present & dropped, listing.stdout


async def test_second_import_of_the_same_image_is_cached(
    templates: dict[str, float], manager: SandboxManager, images: Images
) -> None:
    stages = Stages()
    started = time.perf_counter()
    # The layout holds the same image (the same config digest) as the archive imported before.
    await import_oci(manager, "oci-busybox-again", str(images.busybox.path), vcpus=1, progress=stages)
    cached_s = time.perf_counter() - started
    print(f"\ncached import of the busybox image: {cached_s:.1f} s (first: {templates['oci-busybox']:.1f} s)")
    await manager.delete_template("oci-busybox-again")
    assert not [name for name in stages.names if name.startswith(("unpacking", "writing"))], stages.names
    assert "booting the image" in stages.names


async def test_an_image_goes_with_the_last_template_or_sandbox_that_uses_it(
    manager: SandboxManager, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    layer = LayerEntries()
    layer.file("etc/collected.txt", b"an image of its own\n")
    write_layout(tmp_path / "own", [layer.tar()], {})
    await import_oci(manager, "oci-collected", str(tmp_path / "own"), vcpus=1)
    image_dir = Path(manager.snapshots.template("oci-collected").rootfs).parent
    sandbox = await sandbox_factory(template="oci-collected")
    await manager.delete_template("oci-collected")
    assert (image_dir / "rootfs.ext4").exists(), "the image went while a sandbox ran from it"
    assert (await sandbox.commands.run("cat /etc/collected.txt")).stdout == "an image of its own\n"
    await manager.destroy(sandbox.id)
    assert not image_dir.exists(), "the image outlived its last template and sandbox"


async def test_the_start_removes_images_nothing_uses_and_dead_imports(test_settings: Settings) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ember-own-"))
    run_dir = Path(tempfile.mkdtemp(prefix="ember-own-", dir="/dev/shm"))
    settings = replace(test_settings, data_dir=data_dir, run_dir=run_dir, pool=())
    (data_dir / "images").symlink_to(test_settings.images_dir.resolve())
    left = [settings.oci_dir / "image-0123456789abcdef", settings.oci_dir / ".tmp-image-fedcba9876543210"]
    for directory in left:
        (directory / "out").mkdir(parents=True)
    engine = SandboxManager(settings)
    try:
        await engine.start()
        assert not any(directory.exists() for directory in left)
    finally:
        await engine.close()
        shutil.rmtree(data_dir)
        shutil.rmtree(run_dir)


# ---------------------------------------------------------------- bad input


def _bad_layout(path: Path, **kwargs: object) -> Path:
    layer = LayerEntries()
    layer.file("etc/ok", b"fine\n")
    write_layout(path, [layer.tar()], {"Cmd": ["sh"]}, **kwargs)  # type: ignore[arg-type]
    return path


def _escaping_layout(path: Path) -> Path:
    layer = LayerEntries()
    layer.file("etc/ok", b"fine\n")
    layer.hardlink("etc/shadow-copy", "../../../../etc/shadow")
    write_layout(path, [layer.tar()], {})
    return path


async def _refused(manager: SandboxManager, name: str, reference: str, **kwargs: object) -> errors.EmberError:
    layers_before = set(manager.layers.directory.iterdir())
    with pytest.raises(errors.EmberError) as caught:
        await import_oci(manager, name, reference, vcpus=1, **kwargs)  # type: ignore[arg-type]
    assert manager.store.snapshot_named(name) is None, "a template was left behind"
    assert set(manager.layers.directory.iterdir()) == layers_before, "a disk layer was left behind"
    assert not manager.list(include_ended=False), "a sandbox was left running"
    published = [p for p in manager.settings.oci_dir.glob("image-*") if p.is_dir()]
    assert all((p / "rootfs.ext4").exists() for p in published), "a half-built image was published"
    return caught.value


async def test_bad_images_fail_with_their_codes_and_leave_nothing(
    manager: SandboxManager, images: Images, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(b"\x00garbage" * 3000)
    error = await _refused(manager, "bad-archive", str(corrupt))
    assert error.code == "image_invalid" and "corrupt.tar" in error.message

    mismatched = _bad_layout(tmp_path / "mismatch", layer_digest_override={0: "sha256:" + "ab" * 32})
    error = await _refused(manager, "bad-digest", str(mismatched))
    assert error.code == "image_digest_mismatch" and "layer 1/1" in error.message

    unknown = _bad_layout(tmp_path / "unknown", layer_media_type="application/x-unknown-layer")
    error = await _refused(manager, "bad-type", str(unknown))
    assert error.code == "image_unsupported" and "layers[0].mediaType" in error.message

    escaping = _escaping_layout(tmp_path / "escaping")
    error = await _refused(manager, "bad-path", str(escaping))
    assert error.code == "image_unsafe_path" and "etc/shadow-copy" in error.message

    wrong = (images.registry.user, "not-the-password")
    error = await _refused(manager, "bad-auth", images.debian_reference, credentials=wrong)
    assert error.code == "registry_unauthorized"

    big = LayerEntries()
    big.file("data/blob", bytes(range(256)) * 8192)  # 2 MiB
    write_layout(tmp_path / "big", [big.tar()], {})
    settings = manager.settings
    manager.settings = replace(settings, image_max_mib=1)
    try:
        error = await _refused(manager, "too-big", str(tmp_path / "big"))
    finally:
        manager.settings = settings
    assert error.code == "image_too_large" and "layer 1/1" in error.message


async def test_a_cached_image_is_refused_under_a_lower_size_limit(
    templates: dict[str, float], manager: SandboxManager, images: Images
) -> None:
    """The busybox image (2 MiB unpacked) is cached, from a build under the default limit."""
    settings = manager.settings
    manager.settings = replace(settings, image_max_mib=1)
    try:
        error = await _refused(manager, "too-big-cached", str(images.busybox.path))
    finally:
        manager.settings = settings
    assert error.code == "image_too_large" and str(images.busybox.path) in error.message
    assert "EMBER_IMAGE_MAX_MIB" in error.message
    template = manager.snapshots.template("oci-busybox")
    assert Path(template.rootfs).exists(), "the image another template uses went"
