"""Small OCI images made on the spot for the tests: written as OCI layouts, with no tool and no network.

Two images: a Debian-ish one (this host's python3, bash and a few coreutils with
their libraries, an unprivileged user) and a busybox-only one (no Python at all).
Each has an upper layer with a whiteout and an opaque directory over the lower.
Layers are built in memory from (path, content) entries; the layout is written
as the OCI image spec lays it out, so the importer reads what any tool would
write (and skopeo, where a test uses it, copies it to an archive or a registry).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
#: The time of every entry that does not come from a host file: the same layer each time.
MTIME = 1_700_000_000


@dataclass
class LayerEntries:
    """What one layer holds, in order: files, directories, symlinks, hard links, whiteouts."""

    members: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def file(
        self, name: str, content: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = MTIME
    ) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid, info.mtime = len(content), mode, uid, gid, mtime
        self.members.append((info, content))

    def directory(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, uid, gid, MTIME
        self.members.append((info, None))

    def symlink(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.members.append((info, None))

    def hardlink(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.LNKTYPE, target
        self.members.append((info, None))

    def host_file(self, path: Path, name: str | None = None) -> None:
        """A file of this host, at the same path in the image unless `name` says otherwise, with its
        mtime: a module's .pyc names its source's, and a stale one is compiled again at every import."""
        info = path.stat()
        mode, mtime = info.st_mode & 0o7777, int(info.st_mtime)
        self.file(name or str(path).lstrip("/"), path.read_bytes(), mode, mtime=mtime)

    def tar(self) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for info, content in self.members:
                archive.addfile(info, io.BytesIO(content) if content is not None else None)
        return buffer.getvalue()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layout:
    """A written OCI layout and what a test checks against."""

    path: Path
    tag: str
    config_digest: str
    manifest_digest: str


def write_layout(
    path: Path,
    layers: list[bytes],
    config: dict[str, object],
    tag: str = "latest",
    *,
    layer_digest_override: dict[int, str] | None = None,
    layer_media_type: str = OCI_LAYER_GZIP,
) -> Layout:
    """An OCI image layout at `path` of these uncompressed layer tars (gzipped into blobs).

    `layer_digest_override` stores layer N's blob under another digest (a corrupted pull).
    """
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes, digest: str | None = None) -> str:
        digest = digest or digest_of(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    descriptors = []
    for number, layer in enumerate(layers):
        compressed = gzip.compress(layer, mtime=0)
        digest = blob(compressed, (layer_digest_override or {}).get(number))
        descriptors.append({"mediaType": layer_media_type, "digest": digest, "size": len(compressed)})
    full_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
    }
    config_bytes = json.dumps(full_config).encode()
    config_digest = blob(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": descriptors,
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = blob(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return Layout(path, tag, config_digest, manifest_digest)


# ---------------------------------------------------------------- the two test images

_SKIPPED_STDLIB = re.compile(
    r"(test|tests|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data|distutils|"
    r"site-packages|dist-packages|config-.*|unittest|email|xml|multiprocessing|sqlite3|curses|"
    r"dbm|venv|wsgiref|xmlrpc|http|urllib|html|lib-dynload)"
)
_LDD = re.compile(r"(/\S+) \(0x")
#: Debian's own python3 (./setup installs it): its stdlib is where a Debian image has it.
DEBIAN_PYTHON = "/usr/bin/python3"


def _with_libraries(entries: LayerEntries, binaries: list[Path], seen: set[str]) -> None:
    for binary in binaries:
        output = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
        for path in [binary, *(Path(m) for m in _LDD.findall(output))]:
            name = str(path).lstrip("/")
            if name not in seen:
                seen.add(name)
                entries.host_file(path.resolve(), name)


def _merged_usr(entries: LayerEntries) -> None:
    for directory in ("usr", "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc"):
        entries.directory(directory)
    for link in ("bin", "lib", "lib64"):
        entries.symlink(link, f"usr/{link}")


def debian_image(path: Path) -> Layout:
    """Debian's python3 (the host's /usr/bin/python3, trimmed stdlib), bash, a few coreutils, user 'app'."""
    base = LayerEntries()
    _merged_usr(base)
    seen: set[str] = set()
    python = Path(DEBIAN_PYTHON).resolve()
    programs = [Path("/usr/bin", name) for name in ("bash", "id", "env", "cat", "ls", "whoami")]
    _with_libraries(base, [python, *programs], seen)
    base.symlink("usr/bin/python3", python.name)
    base.symlink("usr/bin/sh", "bash")
    stdlib = Path("/usr/lib", python.name)
    for directory, subdirs, names in os.walk(stdlib):
        relative = Path(directory).relative_to(stdlib)
        if relative == Path("."):
            subdirs[:] = [d for d in subdirs if not _SKIPPED_STDLIB.fullmatch(d)]
        for name in names:
            if name.endswith((".py", ".pyc")):
                base.host_file(Path(directory, name), f"usr/lib/{stdlib.name}/{relative}/{name}")
    dynload = stdlib / "lib-dynload"
    for module in ("_asyncio", "_json", "_contextvars", "_queue", "_typing", "resource", "termios", "mmap"):
        for found in dynload.glob(f"{module}.*.so"):
            base.host_file(found, f"usr/lib/{stdlib.name}/lib-dynload/{found.name}")
    base.file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000:app:/home/app:/bin/bash\n")
    base.file("etc/group", b"root:x:0:\napp:x:1000:\n")
    base.directory("home/app", mode=0o755, uid=1000, gid=1000)
    base.directory("srv")
    base.file("etc/doomed.conf", b"deleted by the upper layer\n")
    base.directory("opt/lower")
    base.file("opt/lower/old.txt", b"hidden by the opaque directory above\n")
    upper = LayerEntries()
    upper.file("etc/.wh.doomed.conf", b"")
    upper.directory("opt/lower")
    upper.file("opt/lower/.wh..wh..opq", b"")
    upper.file("opt/lower/new.txt", b"from the upper layer\n")
    upper.file("srv/app/hello.txt", b"hello from the image\n", uid=1000, gid=1000)
    config = {
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from oci", "LANG=C.UTF-8"],
        "WorkingDir": "/srv/app",
        "User": "app",
        "Entrypoint": ["python3"],
        "Cmd": ["-m", "http.server", "8000"],
    }
    return write_layout(path, [base.tar(), upper.tar()], config, tag="debian")


def busybox_image(path: Path, kind: str = "busybox") -> Layout:
    """Only a static busybox and its applets: no Python, no bash, no libraries. `kind` (its
    IMAGE_KIND) makes an image of another digest."""
    base = LayerEntries()
    base.directory("bin")
    base.host_file(Path(shutil.which("busybox") or "/bin/busybox").resolve(), "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo", "id", "env", "pwd", "mkdir", "true", "stty", "rm"):
        base.symlink(f"bin/{applet}", "busybox")
    base.directory("etc")
    base.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    base.file("etc/group", b"root:x:0:\n")
    base.file("etc/motd", b"gone in the next layer\n")
    upper = LayerEntries()
    upper.file("etc/.wh.motd", b"")
    config = {"Env": ["PATH=/bin", f"IMAGE_KIND={kind}"], "WorkingDir": "/work", "Cmd": ["sh"]}
    return write_layout(path, [base.tar(), upper.tar()], config, tag="busybox")
