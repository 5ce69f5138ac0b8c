"""The guest kernel: Debian's kernel source, `make tinyconfig` plus Ember's fragment.

The result is an uncompressed ELF ``vmlinux``: QEMU's microvm enters it through
the PVH note, Firecracker loads it as it is. The final ``.config`` is kept next
to it as ``config``.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib import resources
from pathlib import Path

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactKey
from ember.images.errors import BuildFailed
from ember.images.kconfig import unmet_options

KERNEL_SOURCE_PACKAGE = "linux-source-6.1"
# Bump when the build steps change in a way that changes the kernel.
KERNEL_BUILDER_VERSION = "1"
FRAGMENT_NAME = "guest-kernel.config"
KERNEL_FILE = "vmlinux"
CONFIG_FILE = "config"

# Progress estimates, counted once from a full build of linux-source-6.1
# (6.1.192) with this fragment: `CC`/`LD` lines printed by `make vmlinux`, and
# tar checkpoints (every 1000 records of 10 KiB) while extracting the source.
MAKE_OBJECT_LINES = 1030
TAR_CHECKPOINTS = 134
_OBJECT_LINE = re.compile(r"^\s+(CC|LD)\s")
_TAR_CHECKPOINT = 1000

# Keep the build host's user and host name out of the guest's `uname -v`.
_KBUILD_ENV = {"KBUILD_BUILD_USER": "ember", "KBUILD_BUILD_HOST": "ember"}


def kernel_fragment() -> str:
    """Ember's config fragment, shipped as package data."""
    return resources.files("ember.images").joinpath(FRAGMENT_NAME).read_text(encoding="utf-8")


def kernel_key() -> ArtifactKey:
    """The kernel's cache key: fragment, kernel source version and builder version."""
    return ArtifactKey(
        "kernel",
        {
            "builder": KERNEL_BUILDER_VERSION,
            "fragment": kernel_fragment(),
            "source_package": KERNEL_SOURCE_PACKAGE,
            "source_version": _installed_version(KERNEL_SOURCE_PACKAGE),
        },
    )


def build_kernel(workspace: Workspace) -> None:
    """Configure, verify and compile the kernel into ``workspace.out``."""
    tarball = Path("/usr/src") / f"{KERNEL_SOURCE_PACKAGE}.tar.xz"
    if not tarball.is_file():
        raise workspace.failure(f"{tarball} is missing: apt-get install {KERNEL_SOURCE_PACKAGE}")
    fragment = kernel_fragment()
    fragment_path = workspace.scratch / FRAGMENT_NAME
    fragment_path.write_text(fragment, encoding="utf-8")

    workspace.stage("extracting kernel source", TAR_CHECKPOINTS)
    workspace.run(
        [
            "tar",
            "--use-compress-program=xz -T0",
            f"--checkpoint={_TAR_CHECKPOINT}",
            "-xf",
            tarball,
            "-C",
            workspace.scratch,
        ],
        on_line=lambda line: workspace.progress.advance() if "checkpoint" in line else None,
    )
    source = workspace.scratch / KERNEL_SOURCE_PACKAGE

    workspace.stage("configuring kernel")
    workspace.run(["make", "tinyconfig"], cwd=source, env=_KBUILD_ENV)
    workspace.run([source / "scripts/kconfig/merge_config.sh", "-m", ".config", fragment_path], cwd=source)
    workspace.run(["make", "olddefconfig"], cwd=source, env=_KBUILD_ENV)
    config = (source / ".config").read_text(encoding="utf-8")
    unmet = unmet_options(fragment, config)
    if unmet:
        raise workspace.failure(
            f"the kernel config does not have {len(unmet)} option(s) of {FRAGMENT_NAME} "
            "(a dependency is missing from the fragment):\n  " + "\n  ".join(unmet)
        )

    workspace.stage("compiling kernel", MAKE_OBJECT_LINES)
    workspace.run(
        ["make", f"-j{os.cpu_count() or 1}", "vmlinux"],
        cwd=source,
        env=_KBUILD_ENV,
        on_line=lambda line: workspace.progress.advance() if _OBJECT_LINE.match(line) else None,
    )
    os.rename(source / "vmlinux", workspace.out / KERNEL_FILE)
    os.rename(source / ".config", workspace.out / CONFIG_FILE)


def _installed_version(package: str) -> str:
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Version}", package],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not result.stdout:
        raise BuildFailed(
            f"the Debian package {package} is not installed; the guest kernel is built "
            f"from it: apt-get install {package}"
        )
    return result.stdout
