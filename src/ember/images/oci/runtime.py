"""The agent's own runtime inside an imported image: Python, its libraries, and a static busybox.

An image may have no Python (busybox, alpine, distroless), or one of another
version or libc, and its binaries cannot be tried on the host without running
the image's code as root. So the agent never uses the image's: it runs on this
host's Python (the one Ember runs on, >= 3.11), copied under ``/.ember/python``
with the shared libraries it loads and the dynamic loader, which starts it
(``ld-linux ... --library-path /.ember/python/lib``), so nothing of it depends on
the image's ``/lib`` or ``/usr``. Init is a shell script, run by a static busybox
(``/.ember/bin``), which is also the shell commands fall back to in an image
without one. Built once per host Python and busybox, hard-linked into each image.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePosixPath

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactKey
from ember.images.errors import BuildFailed

RUNTIME_DIR = "runtime"
#: Where the runtime lives in the guest; everything Ember adds to an image is under it.
GUEST_ROOT = PurePosixPath("/.ember")
PYTHON_HOME = GUEST_ROOT / "python"
BIN_DIR = GUEST_ROOT / "bin"
#: The busybox applets init runs, and ``sh`` for commands in an image without a shell.
APPLETS = ("sh", "mount", "mkdir", "ln", "pivot_root")
# Bump when the steps below change what ends up in the runtime.
RUNTIME_BUILDER_VERSION = "2"
# Parts of the standard library the agent never imports: tests, GUIs, build support.
_SKIPPED_STDLIB = re.compile(
    r"(test|tests|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data|distutils|"
    r"site-packages|dist-packages|__pycache__|config-.*|lib-dynload)"
)
# Extension modules never imported by the agent, several with large libraries behind them.
_SKIPPED_EXTENSIONS = re.compile(
    r"(_test.*|_xxtest.*|xxlimited.*|_ctypes_test|_xxsubinterpreters|_tkinter|_curses.*|readline|"
    r"_dbm|_gdbm|nis|ossaudiodev|_sqlite3|_ssl|_hashlib|_crypt|audioop)\..*"
)
_LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(/\S+) \(0x[0-9a-f]+\)$")


def runtime_key() -> ArtifactKey:
    """The runtime's cache key: this host's Python binary and stdlib, and its busybox."""
    return ArtifactKey(
        "agent-runtime",
        {
            "builder": RUNTIME_BUILDER_VERSION,
            "python": _file_digest(_python_binary()),
            "stdlib": _stdlib().as_posix(),
            "version": sys.version,
            "busybox": _file_digest(_busybox()),
        },
    )


def loader_command() -> str:
    """How init starts the agent's Python: through its own loader, with its own libraries."""
    return f"{PYTHON_HOME}/lib/{_loader_name()} --library-path {PYTHON_HOME}/lib {PYTHON_HOME}/bin/python3"


def build_runtime(workspace: Workspace) -> None:
    """Copy Python, its stdlib and libraries, and busybox into ``workspace.out/runtime``."""
    workspace.stage("collecting the agent's Python and busybox")
    runtime = workspace.out / RUNTIME_DIR
    home = runtime / PYTHON_HOME.relative_to(GUEST_ROOT)
    (home / "bin").mkdir(parents=True)
    shutil.copy2(_python_binary(), home / "bin/python3")
    stdlib_target = home / "lib" / _stdlib().name
    shutil.copytree(_stdlib(), stdlib_target, symlinks=True, ignore=_ignore_stdlib)
    dynload_source = Path(sysconfig.get_config_var("DESTSHARED"))
    dynload = stdlib_target / "lib-dynload"
    dynload.mkdir()
    for module in dynload_source.iterdir():
        if module.is_file() and not _SKIPPED_EXTENSIONS.fullmatch(module.name):
            shutil.copy2(module, dynload / module.name)
    for name, path in _shared_libraries([home / "bin/python3", *dynload.iterdir()]).items():
        shutil.copy2(path, home / "lib" / name)
    # Compiled once here, with hash-based .pyc files that stay valid whatever the mtimes; the
    # guest's stdlib is read-only, and the agent would compile it at every start.
    workspace.run(
        [
            sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
            "-s", home, "-p", str(PYTHON_HOME), stdlib_target,
        ]
    )  # fmt: skip
    bin_dir = runtime / BIN_DIR.relative_to(GUEST_ROOT)
    bin_dir.mkdir()
    shutil.copy2(_busybox(), bin_dir / "busybox")
    for applet in APPLETS:
        (bin_dir / applet).symlink_to("busybox")


def _ignore_stdlib(directory: str, names: list[str]) -> list[str]:
    top = Path(directory) == _stdlib()
    return [name for name in names if name == "__pycache__" or (top and _SKIPPED_STDLIB.fullmatch(name))]


def _shared_libraries(binaries: list[Path]) -> dict[str, Path]:
    """Every shared library the binaries load (by the name they ask for), and the loader."""
    found: dict[str, Path] = {}
    for binary in binaries:
        output = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
        for line in output.splitlines():
            match = _LDD_LINE.match(line)
            if match is None or "linux-vdso" in line:
                continue
            soname, path = match.group(1), Path(match.group(2))
            found[soname or path.name] = path.resolve()
    return found


def _loader_name() -> str:
    names = [name for name in _shared_libraries([_python_binary()]) if name.startswith("ld-linux")]
    if not names:
        raise BuildFailed(f"{_python_binary()} names no ld-linux loader: is it a glibc build?")
    return names[0]


def _python_binary() -> Path:
    return Path(sys.executable).resolve()


def _stdlib() -> Path:
    return Path(sysconfig.get_path("stdlib")).resolve()


def _busybox() -> Path:
    """The host's busybox, which must be static (Debian's busybox-static): init runs before any library."""
    found = shutil.which("busybox", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if found is None:
        raise BuildFailed("importing OCI images needs a static busybox: apt-get install busybox-static")
    path = Path(found).resolve()
    result = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    if result.returncode == 0 and "statically linked" not in result.stdout:
        raise BuildFailed(f"{path} is dynamically linked; importing OCI images needs busybox-static")
    return path


def _file_digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def link_tree(source: Path, target: Path, workspace: Workspace) -> None:
    """Copy a cached tree as hard links (a copy where links cannot cross filesystems)."""
    try:
        workspace.run(["cp", "--archive", "--link", source, target])
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        workspace.run(["cp", "--archive", source, target])
