"""The agent's own runtime inside an imported image: Debian's Python, its libraries, and a static busybox.

An image may have no Python (busybox, alpine, distroless), or one of another
version or libc, and its binaries cannot be tried on the host without running
the image's code as root. So the agent never uses the image's: it runs on
Debian's python3, taken from the Debian tree Ember's own guests are made of
(``ember.images.debian_tree``), so every guest's agent runs on the same
interpreter whatever Python the host runs. Under ``/.ember/python`` go the
interpreter, the part of its standard library the agent may use (no test
suites, GUI, packaging or build support, no extension module with a big library
behind it), the shared libraries those load, and Debian's dynamic loader as
``lib/ld.so``, which starts it (``ld.so --library-path /.ember/python/lib``),
so nothing of it depends on the image's ``/lib`` or ``/usr``. Init is a shell
script, run by a static busybox (``/.ember/bin``), which is also the shell
commands fall back to in an image without one. Built once per Debian tree and
busybox (its cache key), hard-linked into each image.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import struct
import subprocess
from functools import partial
from pathlib import Path, PurePosixPath

from ember.images._workspace import Workspace
from ember.images.cache import ArtifactCache, ArtifactKey
from ember.images.debian_tree import debian_tree_key
from ember.images.errors import BuildFailed
from ember.images.guest import ensure_debian_tree
from ember.images.oci.layers import resolve_inside
from ember.images.progress import BuildProgress
from ember.settings import Settings

RUNTIME_DIR = "runtime"
#: Where the runtime lives in the guest; everything Ember adds to an image is under it.
GUEST_ROOT = PurePosixPath("/.ember")
PYTHON_HOME = GUEST_ROOT / "python"
BIN_DIR = GUEST_ROOT / "bin"
#: Debian's loader, under a name of our own: it is always started by that path.
LOADER = PYTHON_HOME / "lib/ld.so"
#: How init starts the agent's Python: through its own loader, with its own libraries only
#: (the image's ld.so.cache is never read).
PYTHON_COMMAND = f"{LOADER} --inhibit-cache --library-path {PYTHON_HOME}/lib {PYTHON_HOME}/bin/python3"
#: The busybox applets init runs, and ``sh`` for commands in an image without a shell.
APPLETS = ("sh", "mount", "mkdir", "ln", "pivot_root")
# Bump when the steps below change what ends up in the runtime.
RUNTIME_BUILDER_VERSION = "4"
# Parts of the standard library the agent never imports: test suites and frameworks, GUIs,
# documentation, packaging and build support, servers, the modules of the extension modules left
# out below, and what only ``site`` reads (the agent runs with -S; Debian's sitecustomize.py
# links to /etc). Left out at any depth:
_SKIPPED_ANYWHERE = frozenset({"test", "tests", "idle_test"})
# and at the top of the standard library:
_SKIPPED_TOP = re.compile(
    r"(unittest|doctest\.py|idlelib|tkinter|turtle\.py|turtledemo|pydoc\.py|pydoc_data|ensurepip|venv|"
    r"lib2to3|distutils|wsgiref|xmlrpc|curses|sqlite3|site-packages|dist-packages|config-.*|"
    r"EXTERNALLY-MANAGED|sitecustomize\.py)"
)
# Extension modules never imported by the agent, several with large libraries behind them
# (_ssl and _hashlib: OpenSSL, 5 MB; hashlib has its own digests built in).
_SKIPPED_EXTENSIONS = re.compile(
    r"(_test.*|_xxtest.*|xxlimited.*|_ctypes_test|_xxsubinterpreters|_tkinter|_curses.*|readline|"
    r"_dbm|_gdbm|nis|ossaudiodev|_sqlite3|_ssl|_hashlib|_crypt|audioop)\..*"
)
_LIST_LINE = re.compile(r"^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$")
_PT_INTERP = 3


def runtime_key(tree: ArtifactKey) -> ArtifactKey:
    """The runtime's cache key: the Debian tree its Python comes from (by that tree's key), and busybox."""
    return ArtifactKey(
        "agent-runtime",
        {"builder": RUNTIME_BUILDER_VERSION, "tree": tree.name, "busybox": _file_digest(_busybox())},
    )


def ensure_runtime(settings: Settings, progress: BuildProgress) -> Path:
    """The runtime's cache directory for this host's Debian tree and busybox, built if missing
    (with the tree, if that is missing too)."""
    cache = ArtifactCache(settings.images_dir)
    key = runtime_key(debian_tree_key())
    built = cache.lookup(key)
    if built is not None:
        return built
    tree = ensure_debian_tree(settings, progress)
    return cache.ensure(key, partial(build_runtime, tree=tree), progress)


def build_runtime(workspace: Workspace, tree: Path) -> None:
    """Link the tree's python3, the stdlib it needs, their libraries and loader, and busybox
    into ``workspace.out/runtime``; then start that Python on its own to compile what is left."""
    workspace.stage("collecting the agent's Python (Debian's) and busybox")
    root = os.path.realpath(tree)
    python = Path(resolve_inside(root, ["usr", "bin", "python3"]))
    stdlib = Path(root, "usr/lib", python.name)
    if not python.is_file() or not (stdlib / "os.py").is_file():
        raise workspace.failure(f"the Debian tree {tree} has no python3 with its standard library")
    loader = Path(resolve_inside(root, _parts(_interpreter(python))))
    runtime = workspace.out / RUNTIME_DIR
    home = runtime / PYTHON_HOME.relative_to(GUEST_ROOT)
    (home / "bin").mkdir(parents=True)
    _link(python, home / "bin/python3")
    stdlib_copy = home / "lib" / stdlib.name
    shutil.copytree(stdlib, stdlib_copy, symlinks=True, ignore=partial(_ignore, stdlib), copy_function=_link)
    binaries = [python, *sorted(p for p in (stdlib_copy / "lib-dynload").iterdir() if p.is_file())]
    for name, path in _libraries(workspace, root, loader, binaries).items():
        _link(path, home / "lib" / name)
    _link(loader, home / LOADER.relative_to(PYTHON_HOME))
    # Started as the guest starts it, which shows it runs on what was linked here. Debian's .pyc
    # files came along (hard links keep the mtimes they check); a module without one is compiled.
    compile_modules(workspace, workspace.out, stdlib_copy, home, PYTHON_HOME)
    bin_dir = runtime / BIN_DIR.relative_to(GUEST_ROOT)
    bin_dir.mkdir()
    _link(_busybox(), bin_dir / "busybox")
    for applet in APPLETS:
        (bin_dir / applet).symlink_to("busybox")


def compile_modules(
    workspace: Workspace, runtime: Path, directory: Path, host_root: Path, guest_root: PurePosixPath
) -> None:
    """Compile the modules under `directory` that have no .pyc yet with the runtime in the
    cache directory `runtime`, started on this host as `PYTHON_COMMAND` starts it in the guest.

    A guest's root filesystem is read-only, so what is not compiled here would be compiled at
    every boot. The .pyc files are hash-based (valid whatever the mtimes) and name their
    sources as the guest sees them (`host_root` there is `guest_root`).
    """
    home = str(runtime / RUNTIME_DIR / PYTHON_HOME.relative_to(GUEST_ROOT))
    python = [part.replace(str(PYTHON_HOME), home) for part in PYTHON_COMMAND.split()]
    workspace.run(
        [
            *python, "-I", "-S", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
            "-s", host_root, "-p", str(guest_root), directory,
        ]
    )  # fmt: skip


def _ignore(stdlib: Path, directory: str, names: list[str]) -> set[str]:
    """What copytree leaves out of `directory`: see the patterns above; a .pyc goes with its source."""
    here = Path(directory)
    if here.name == "__pycache__":
        return {name for name in names if _skipped(stdlib, here.parent, name.split(".", 1)[0] + ".py")}
    return {name for name in names if _skipped(stdlib, here, name)}


def _skipped(stdlib: Path, directory: Path, name: str) -> bool:
    if name in _SKIPPED_ANYWHERE:
        return True
    if directory == stdlib:
        return bool(_SKIPPED_TOP.fullmatch(name))
    return directory == stdlib / "lib-dynload" and bool(_SKIPPED_EXTENSIONS.fullmatch(name))


def _libraries(workspace: Workspace, root: str, loader: Path, binaries: list[Path]) -> dict[str, Path]:
    """Every shared library the binaries load, by the name they ask for, found in the tree
    by the tree's own loader (``--list``, which loads but runs nothing)."""
    library_path = str(loader.parent)  # Debian's multiarch directory: every library is there
    found: dict[str, Path] = {}
    for binary in binaries:
        lines: list[str] = []
        listing = [loader, "--inhibit-cache", "--library-path", library_path, "--list", binary]
        workspace.run(listing, on_line=lines.append)
        for line in lines:
            match = _LIST_LINE.match(line)
            if match is None:
                continue
            name, where = match.groups()
            if name.startswith("/"):  # the loader itself
                continue
            if not where.startswith(root + "/"):  # "not found", or found on the host instead
                raise workspace.failure(f"{binary.name} needs {name}, which the Debian tree does not have")
            found[name] = Path(resolve_inside(root, _parts(os.path.relpath(where, root))))
    return found


def _interpreter(binary: Path) -> str:
    """The loader an ELF executable names (its PT_INTERP), such as /lib64/ld-linux-x86-64.so.2."""
    with binary.open("rb") as file:
        header = file.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise BuildFailed(f"{binary} is not a 64-bit little-endian ELF executable")
        (table,) = struct.unpack_from("<Q", header, 32)
        entry_size, entries = struct.unpack_from("<HH", header, 54)
        for index in range(entries):
            file.seek(table + index * entry_size)
            kind, _, offset, _, _, size = struct.unpack("<IIQQQQ", file.read(40))
            if kind == _PT_INTERP:
                file.seek(offset)
                return file.read(size).rstrip(b"\0").decode()
    raise BuildFailed(f"{binary} names no loader: is it statically linked?")


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


def _link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """A hard link to a cached file (never written again), or a copy across filesystems."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)


def _parts(path: str) -> list[str]:
    return [part for part in PurePosixPath(path).parts if part != "/"]


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
