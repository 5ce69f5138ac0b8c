"""The private area one artifact is built in, and the subprocesses run there."""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ember.images.errors import BuildFailed
from ember.images.progress import BuildProgress

LOG_NAME = "build.log"
_LOG_TAIL_LINES = 25
# setpriv (util-linux) sets the child's parent-death signal before exec: if the
# builder is killed with -9, make or debootstrap get SIGTERM instead of running
# on as orphans that keep writing into a build directory already declared stale.
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "TERM", "--")
# Builds run with a small, fixed environment (plus any proxy settings), so the
# host user's shell setup (PYTHONPATH, pyenv shims, locale) cannot leak in.
_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}
_PASSED_ENV = (
    "HOME",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


class Workspace:
    """`out` becomes the artifact when the build succeeds; `scratch` is thrown away.

    Every subprocess's output goes to `out/build.log` and, line by line, to the
    progress receiver. `inherited_fds` (the cache lock) are passed to children, so
    the lock stays held until the last of them has exited, even if the builder
    itself was killed.
    """

    def __init__(
        self,
        out: Path,
        scratch: Path,
        progress: BuildProgress,
        inherited_fds: Sequence[int] = (),
    ) -> None:
        self.out = out
        self.scratch = scratch
        self.progress = progress
        self.log_path = out / LOG_NAME
        self._inherited_fds = tuple(inherited_fds)
        self._started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def stage(self, name: str, total: int | None = None) -> None:
        """Start a named step, in the log (with the time since the build began) and on screen."""
        self.note(f"== {name} (at {self.elapsed_s:.1f} s)")
        self.progress.stage(name, total)

    def note(self, text: str) -> None:
        """Append a line of our own to the build log."""
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(text + "\n")

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """Run `argv` to completion, logging its output; raise `BuildFailed` if it fails."""
        command = [os.fspath(arg) for arg in argv]
        self.note("$ " + " ".join(command))
        passed = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        full_env = {**_BASE_ENV, **passed, **(env or {})}
        with self.log_path.open("ab", buffering=0) as log:
            process = subprocess.Popen(
                [*_DIE_WITH_PARENT, *command],
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=self._inherited_fds,
            )
            assert process.stdout is not None
            try:
                for raw in process.stdout:
                    log.write(raw)
                    line = raw.decode("utf-8", "replace").rstrip()
                    self.progress.log(line)
                    if on_line is not None:
                        on_line(line)
                returncode = process.wait()
            except BaseException:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                raise
        if returncode != 0:
            raise self.failure(f"{command[0]} exited with status {returncode}")

    def failure(self, reason: str) -> BuildFailed:
        """A `BuildFailed` whose message ends with the log's last lines and its path."""
        self.note(f"!! {reason}")
        with self.log_path.open(encoding="utf-8", errors="replace") as log:
            tail = "".join(deque(log, maxlen=_LOG_TAIL_LINES))
        return BuildFailed(
            f"{reason}\n--- last lines of {self.log_path} ---\n{tail}--- full log: {self.log_path}",
            self.log_path,
        )
