"""The Debian tree under the guest's root filesystem: debootstrap plus Ember's packages.

This is the slow part of the rootfs (a few minutes, network bound), so it is
its own cached artifact, keyed by suite and package list only. The
rootfs image is assembled from it in seconds, so a change to the agent never
re-runs debootstrap. Building needs root (debootstrap, chroot).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ember.agent.registries import APT_SOURCES
from ember.images._workspace import Workspace
from ember.images.cache import ArtifactKey

DEBIAN_SUITE = "bookworm"
# What a sandbox has without installing anything, in groups. Sizes: each group
# installed alone on top of the core (bookworm, no recommends); all together they
# add ~800 MiB and ~35k files to the core's ~340 MiB. The base is one read-only
# image shared by every sandbox: its size costs disk and setup time, not memory.
_CORE = (  # Python, Node.js, a shell and what the agent and the network need
    "bash", "ca-certificates", "coreutils", "curl", "git", "gzip", "iproute2",
    "libnss-myhostname", "nodejs", "procps", "python3", "python3-pip", "python3-venv",
    "tar", "util-linux",
)  # fmt: skip
_TOOLS = (  # fetching, archives, data at the shell, searching, patching: +24 MiB
    "bc", "bzip2", "file", "jq", "less", "lsof", "netcat-openbsd", "openssh-client",
    "patch", "ripgrep", "rsync", "sqlite3", "unzip", "wget", "xz-utils", "zip", "zstd",
)  # fmt: skip
# Compilers and headers, for pip and npm packages without binaries: +264 MiB.
_BUILD = ("build-essential", "pkg-config", "python3-dev")
# Debian's npm is ~350 node-* packages (27k small files): +96 MiB.
_NODE = ("npm",)
# ffmpeg: +397 MiB, of which Mesa's GPU drivers and LLVM (~165 MiB), pulled in by
# libavdevice through libgl1, can never run in a microVM without a GPU; they stay,
# because a package installed without its files would break whatever needs it later.
# ImageMagick: +53 MiB; poppler-utils (pdftotext, pdftoppm): +22 MiB.
_MEDIA = ("ffmpeg", "imagemagick", "poppler-utils")
DEBIAN_PACKAGES = (*_CORE, *_TOOLS, *_BUILD, *_NODE, *_MEDIA)
# Bump when the steps below change what ends up in the tree.
TREE_BUILDER_VERSION = "3"
TREE_DIR = "tree"
PACKAGES_FILE = "packages.txt"
GUEST_USER = "user"
GUEST_UID = 1000
APP_DIR = "app"

_CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
# apt prints one line per package for each of these; they drive the progress bar.
# (Not APT::Status-Fd: with it pointed at the shared output pipe, maintainer
# scripts failed to write to that pipe: "update-ca-certificates: echo: I/O error".)
_APT_STEP = re.compile(r"^(Get:\d+ |Unpacking |Setting up )")
_APT_STEPS_PER_PACKAGE = 3

# Documentation, manual pages and translations are never read in a sandbox;
# dpkg skips them for the packages installed here and for any a sandbox installs
# later. Copyright files stay.
_DPKG_EXCLUDES = """\
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
"""

# A sandbox is its own throw-away machine: let `pip install` work system-wide
# (PEP 668 would refuse it) and without the warning about running as root.
_PIP_CONF = """\
[global]
break-system-packages = true
root-user-action = ignore
"""


def debian_tree_key() -> ArtifactKey:
    """The tree's cache key: suite, package list and builder version.

    Not the mirror: it is where the packages come from, not what they are (nor
    is the date, which changes them as much), and a sandbox's apt is pointed at
    the host's mirror of the day. A new mirror or proxy rebuilds nothing.
    """
    return ArtifactKey(
        "debian-tree",
        {
            "builder": TREE_BUILDER_VERSION,
            "packages": " ".join(sorted(DEBIAN_PACKAGES)),
            "suite": DEBIAN_SUITE,
        },
    )


def build_debian_tree(workspace: Workspace, mirror: str) -> None:
    """debootstrap `DEBIAN_SUITE` into ``workspace.out/tree`` and make it an Ember guest."""
    if os.geteuid() != 0:
        raise workspace.failure("building the root filesystem needs root (debootstrap, chroot)")
    tree = workspace.out / TREE_DIR
    chroot = ["chroot", tree]

    workspace.stage(f"debootstrap {DEBIAN_SUITE} minbase from {mirror}")
    workspace.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, tree, mirror])

    _write(tree / "etc/dpkg/dpkg.cfg.d/ember-slim", _DPKG_EXCLUDES)
    # No service may start inside the chroot while packages are configured.
    _write(tree / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    _write_apt_sources(tree, mirror)
    workspace.stage("updating package lists")
    workspace.run([*chroot, "apt-get", "update"], env=_CHROOT_ENV)
    # Dpkg::Use-Pty=0: apt would open a pty for its terminal log, and the chroot
    # has no /dev/pts.
    install = [
        *chroot,
        "apt-get",
        "install",
        "--yes",
        "--no-install-recommends",
        "-o",
        "Dpkg::Use-Pty=0",
        *DEBIAN_PACKAGES,
    ]
    new_packages: list[str] = []
    workspace.run(
        [*install, "--simulate"],
        env=_CHROOT_ENV,
        on_line=lambda line: new_packages.append(line) if line.startswith("Inst ") else None,
    )
    steps = _APT_STEPS_PER_PACKAGE * len(new_packages)
    workspace.stage("installing guest packages", total=steps)
    workspace.run(
        install,
        env=_CHROOT_ENV,
        on_line=lambda line: workspace.progress.advance() if _APT_STEP.match(line) else None,
    )

    workspace.stage("configuring guest")
    workspace.run(
        [
            *chroot,
            "useradd",
            "--create-home",
            "--uid",
            str(GUEST_UID),
            "--user-group",
            "--shell",
            "/bin/bash",
            GUEST_USER,
        ],
        env=_CHROOT_ENV,
    )
    app = tree / APP_DIR
    app.mkdir(mode=0o755, exist_ok=True)
    os.chown(app, GUEST_UID, GUEST_UID)
    # Every restore renames the guest, on the clock: the name lives in the kernel
    # only. /etc/hostname shows it, and glibc's myhostname module resolves it.
    (tree / "etc/hostname").unlink(missing_ok=True)
    (tree / "etc/hostname").symlink_to("/proc/sys/kernel/hostname")
    _write(tree / "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    nsswitch = tree / "etc/nsswitch.conf"
    lines = nsswitch.read_text().splitlines()
    hosts = "hosts:          files myhostname dns"
    _write(nsswitch, "\n".join(hosts if line.startswith("hosts:") else line for line in lines) + "\n")
    # debootstrap copied the build host's resolver; a sandbox has no DNS until
    # it is given a network.
    _write(tree / "etc/resolv.conf", "")
    _write(tree / "etc/pip.conf", _PIP_CONF)
    workspace.run([*chroot, "apt-get", "clean"], env=_CHROOT_ENV)
    (tree / "usr/sbin/policy-rc.d").unlink()
    _remove_droppable(tree)
    installed: list[str] = []
    workspace.run(
        [
            "dpkg-query",
            f"--admindir={tree / 'var/lib/dpkg'}",
            "--show",
            "--showformat=${Package}\t${Version}\t${Installed-Size}\n",
        ],
        on_line=installed.append,
    )
    _write(workspace.out / PACKAGES_FILE, "\n".join(installed) + "\n")


def _write_apt_sources(tree: Path, mirror: str) -> None:
    """Ember's own file, whose URIs the agent points at the host's mirror of the day."""
    (tree / "etc/apt/sources.list").unlink(missing_ok=True)
    _write(
        tree / APT_SOURCES,
        f"Types: deb\nURIs: {mirror}\nSuites: {DEBIAN_SUITE} {DEBIAN_SUITE}-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )


def _remove_droppable(tree: Path) -> None:
    """Delete what dpkg's excludes could not keep out (minbase came first), caches and logs."""
    for package_doc in (tree / "usr/share/doc").iterdir():
        if package_doc.is_dir() and not package_doc.is_symlink():
            for entry in package_doc.iterdir():
                if entry.name != "copyright":
                    _remove(entry)
    for directory, keep in (
        ("usr/share/man", ()),
        ("usr/share/info", ()),
        ("usr/share/lintian", ()),
        ("usr/share/locale", ()),
        ("var/lib/apt/lists", ("partial", "lock")),
        ("var/cache/apt", ("archives",)),
    ):
        path = tree / directory
        if path.is_dir():
            for entry in path.iterdir():
                if entry.name not in keep:
                    _remove(entry)
    for old in (tree / "var/cache/debconf").glob("*-old"):
        old.unlink()
    for log in (tree / "var/log").rglob("*"):
        if log.is_file() and not log.is_symlink():
            log.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _write(path: Path, content: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # may be a symlink (resolv.conf): never write through it
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
