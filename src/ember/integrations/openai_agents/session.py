"""``EmberSandboxSession``: the OpenAI Agents SDK's sandbox session on one Ember sandbox.

Commands run through ``sandbox.commands`` with the manifest's environment and the
workspace root as working directory. File operations (read, write, mkdir, rm, mv,
ls) go straight to Ember's file API, so ``apply_patch`` and ``view_image`` cost no
shell round trip. Paths are confined to the workspace by the SDK's own path policy
(lexically: ``..`` and outside absolute paths are refused with
``InvalidManifestPathError``); symlinks are not chased, since the agent owns the
whole VM and reaches every file through ``exec`` anyway. The workspace persists
as a tar archive moved through the file API, or as an Ember snapshot of the whole
sandbox (``workspace_persistence="snapshot"``), whose id is all the SDK stores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from agents.sandbox.errors import (
    ExecTimeoutError,
    ExposedPortUnavailableError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
    WorkspaceStartError,
    WorkspaceWriteTypeError,
)
from agents.sandbox.files import EntryKind, FileEntry
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.bounded_read import collect_bounded
from agents.sandbox.session.pty_types import (
    PtyExecUpdate,
    clamp_pty_yield_time_ms,
    resolve_pty_write_yield_time_ms,
)
from agents.sandbox.session.tar_workspace import shell_tar_exclude_args
from agents.sandbox.types import ExecResult, ExposedPortEndpoint, Permissions, User
from agents.sandbox.util.tar_utils import UnsafeTarMemberError, validate_tar_bytes
from agents.sandbox.workspace_paths import sandbox_path_str

from ember import errors
from ember.client import AsyncSandbox, FileInfo
from ember.integrations.openai_agents import _processes
from ember.integrations.openai_agents._connection import SESSION_METADATA_KEY, Connection
from ember.integrations.openai_agents._errors import raise_exec_error
from ember.integrations.openai_agents.state import EmberSandboxSessionState

logger = logging.getLogger(__name__)

_KINDS = {"file": EntryKind.FILE, "dir": EntryKind.DIRECTORY, "symlink": EntryKind.SYMLINK}
#: Default wait for output of a new interactive process (the SDK's exec_command default).
_START_YIELD_MS = 10_000
_WRITE_YIELD_MS = 250
#: What ``persist_workspace`` returns for an Ember snapshot: this marker, then the snapshot's id.
_SNAPSHOT_MARKER = b"EMBER_SNAPSHOT_V1\n"
_SPOOL_MAX_BYTES = 32 * 1024 * 1024


class EmberSandboxSession(BaseSandboxSession):
    """A session bound to one Ember sandbox (``state.sandbox_id``)."""

    state: EmberSandboxSessionState

    def __init__(
        self, state: EmberSandboxSessionState, sandbox: AsyncSandbox, connection: Connection
    ) -> None:
        self.state = state
        self.sandbox = sandbox
        self._connection = connection
        self._root_ready = state.workspace_root_ready
        self._processes = _processes.ProcessTable()

    # ------------------------------------------------------------ lifecycle

    async def _prepare_backend_workspace(self) -> None:
        root = self._workspace_root_path()
        try:
            await self.sandbox.files.mkdir(sandbox_path_str(root), parents=True)
        except errors.EmberError as exc:
            raise WorkspaceStartError(path=root, context={"code": exc.code}, cause=exc) from exc
        self._root_ready = True

    async def running(self) -> bool:
        try:
            return (await self.sandbox.info()).state == "running"
        except (errors.EmberError, RuntimeError):  # RuntimeError: this session already shut down
            return False

    def supports_pty(self) -> bool:
        return True

    async def pty_terminate_all(self) -> None:
        await self._processes.close()

    async def _shutdown_backend(self) -> None:
        """Kill the sandbox, or with ``keep_alive`` leave it running for a later resume."""
        if self.state.options.keep_alive:
            with contextlib.suppress(RuntimeError):  # already closed
                self.sandbox.detach()
        else:
            with contextlib.suppress(
                errors.SandboxNotFoundError, errors.SandboxNotRunningError, RuntimeError
            ):
                await self.sandbox.kill()
        await self.sandbox.close()

    # ------------------------------------------------------------ commands

    async def _env(self) -> dict[str, str]:
        return await self.state.manifest.environment.resolve()

    def _cwd(self) -> str:
        return sandbox_path_str(self._workspace_root_path()) if self._root_ready else "/"

    async def _exec_internal(self, *command: str | Path, timeout: float | None = None) -> ExecResult:
        argv, user = _split_user([str(part) for part in command])
        try:
            result = await self.sandbox.commands.run(
                shlex.join(argv), env=await self._env(), cwd=self._cwd(), user=user, timeout=timeout
            )
        except errors.EmberError as exc:
            raise_exec_error(exc, command=command, timeout_s=timeout)
        if result.timed_out:
            raise ExecTimeoutError(command=command, timeout_s=timeout)
        exit_code = result.exit_code if result.signal is None else 128 + result.signal
        return ExecResult(stdout=result.stdout.encode(), stderr=result.stderr.encode(), exit_code=exit_code)

    async def pty_exec_start(
        self,
        *command: str | Path,
        timeout: float | None = None,
        shell: bool | list[str] = True,
        user: str | User | None = None,
        tty: bool = False,
        yield_time_s: float | None = None,
        max_output_tokens: int | None = None,
    ) -> PtyExecUpdate:
        argv, run_as = _split_user(self._prepare_exec_command(*command, shell=shell, user=user))
        try:
            process = await _processes.start(
                self.sandbox,
                shlex.join(argv),
                tty=tty,
                env=await self._env(),
                cwd=self._cwd(),
                user=run_as,
                timeout_s=timeout,
            )
        except errors.EmberError as exc:
            raise_exec_error(exc, command=command, timeout_s=timeout)
        process_id = await self._processes.add(process)
        yield_ms = _START_YIELD_MS if yield_time_s is None else int(yield_time_s * 1000)
        return await self._processes.update(process_id, clamp_pty_yield_time_ms(yield_ms), max_output_tokens)

    async def pty_write_stdin(
        self,
        *,
        session_id: int,
        chars: str,
        yield_time_s: float | None = None,
        max_output_tokens: int | None = None,
    ) -> PtyExecUpdate:
        process = self._resolve_pty_session_entry(pty_processes=self._processes, session_id=session_id)
        if chars:
            try:
                await process.write(chars)
            except errors.EmberError as exc:
                raise_exec_error(exc, command=("write_stdin", str(session_id)), timeout_s=None)
        yield_ms = _WRITE_YIELD_MS if yield_time_s is None else int(yield_time_s * 1000)
        yield_ms = resolve_pty_write_yield_time_ms(yield_time_ms=yield_ms, input_empty=chars == "")
        return await self._processes.update(session_id, yield_ms, max_output_tokens)

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        """The host address of an exposed sandbox port: Ember's host-based port URL, with its token.

        The SDK's endpoint is a host and a port, so it needs the daemon to serve ports
        by host name (``EMBER_DOMAIN``); path-based URLs do not fit and are refused.
        """
        try:
            exposed = await self.sandbox.expose(port)
        except errors.EmberError as exc:
            raise self._port_unavailable(port, str(exc), exc) from exc
        url = urlsplit(exposed.url)
        if url.path not in ("", "/") or url.hostname is None:
            detail = "the daemon serves ports by path only: set EMBER_DOMAIN on it for host-based port URLs"
            raise self._port_unavailable(port, detail)
        tls = url.scheme == "https"
        return ExposedPortEndpoint(
            host=url.hostname,
            port=url.port or (443 if tls else 80),
            tls=tls,
            query=urlencode({"ember_token": exposed.token}),
        )

    def _port_unavailable(
        self, port: int, detail: str, cause: BaseException | None = None
    ) -> ExposedPortUnavailableError:
        return ExposedPortUnavailableError(
            port=port,
            exposed_ports=self.state.exposed_ports,
            reason="backend_unavailable",
            context={"backend": "ember", "detail": detail},
            cause=cause,
        )

    # ------------------------------------------------------------ files

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        if user is not None:
            await self._check_read_with_exec(path, user=user)
        target = self.normalize_path(path)
        with _file_errors(target, writing=False):
            return io.BytesIO(await self.sandbox.files.read(sandbox_path_str(target)))

    async def _read_bounded(self, path: Path, *, max_bytes: int) -> bytes:
        target = sandbox_path_str(self.normalize_path(path))
        async with contextlib.aclosing(self.sandbox.files.iter_read(target)) as chunks:
            return await collect_bounded(chunks, max_bytes)

    async def write(self, path: Path, data: io.IOBase, *, user: str | User | None = None) -> None:
        if user is not None:
            await self._check_write_with_exec(path, user=user)
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=path, actual_type=type(payload).__name__)
        target = self.normalize_path(path, for_write=True)
        with _file_errors(target, writing=True):
            await self.sandbox.files.write(sandbox_path_str(target), bytes(payload))

    async def mkdir(self, path: Path | str, *, parents: bool = False, user: str | User | None = None) -> None:
        if user is not None:
            await self._check_mkdir_with_exec(path, parents=parents, user=user)
        target = self.normalize_path(path, for_write=True)
        with _file_errors(target, writing=True):
            await self.sandbox.files.mkdir(sandbox_path_str(target), parents=parents)

    async def rm(self, path: Path | str, *, recursive: bool = False, user: str | User | None = None) -> None:
        if user is not None:
            await self._check_rm_with_exec(path, recursive=recursive, user=user)
        target = self.normalize_path(path, for_write=True)
        try:
            with _file_errors(target, writing=True):
                await self.sandbox.files.remove(sandbox_path_str(target), recursive=recursive)
        except WorkspaceReadNotFoundError:
            if not recursive:  # as `rm -rf`, a recursive removal of nothing succeeds
                raise

    async def mv(
        self, source: Path | str, destination: Path | str, *, user: str | User | None = None
    ) -> None:
        """Rename a file or symlink over `destination`; directories are refused, as by the SDK."""
        if user is not None:
            return await super().mv(source, destination, user=user)
        from_path = self.normalize_path(source, for_write=True)
        to_path = self.normalize_path(destination, for_write=True)
        with _file_errors(from_path, writing=False):
            if (await self.sandbox.files.stat(sandbox_path_str(from_path))).type == "dir":
                raise WorkspaceArchiveWriteError(
                    path=from_path, message="move source must be a file or symlink"
                )
        with _file_errors(to_path, writing=True):
            await self.sandbox.files.rename(sandbox_path_str(from_path), sandbox_path_str(to_path))

    async def ls(self, path: Path | str, *, user: str | User | None = None) -> list[FileEntry]:
        if user is not None:
            return await super().ls(path, user=user)
        target = self.normalize_path(path)
        with _file_errors(target, writing=False):
            infos = await self.sandbox.files.list(sandbox_path_str(target))
        return [_file_entry(info) for info in infos]

    # ------------------------------------------------------------ persistence

    def _archive_path(self) -> str:
        return f"/tmp/ember-workspace-{self.state.session_id.hex}.tar"

    async def persist_workspace(self) -> io.IOBase:
        if self.state.options.workspace_persistence == "snapshot":
            return await self._persist_snapshot_ref()
        return await self._persist_tar()

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        raw = data.read()
        if isinstance(raw, str):
            raw = raw.encode()
        if not isinstance(raw, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=self._workspace_root_path(), actual_type=type(raw).__name__)
        if raw.startswith(_SNAPSHOT_MARKER):
            await self._restore_snapshot(raw[len(_SNAPSHOT_MARKER) :].decode())
        else:
            await self._hydrate_tar(bytes(raw))

    async def _persist_snapshot_ref(self) -> io.IOBase:
        """Snapshot the whole sandbox and delete the session's previous snapshot."""
        metadata = {SESSION_METADATA_KEY: str(self.state.session_id)}
        try:
            snapshot = await self.sandbox.snapshot(metadata=metadata)
        except errors.EmberError as exc:
            raise WorkspaceArchiveReadError(
                path=self._workspace_root_path(), context={"code": exc.code}, cause=exc
            ) from exc
        previous, self.state.ember_snapshot_id = self.state.ember_snapshot_id, snapshot.id
        if previous is not None and previous != snapshot.id:
            try:
                await self._connection.delete_snapshot(previous)
            except errors.EmberError as exc:  # the new snapshot is what matters; the old one only wastes disk
                logger.warning("could not delete the session's previous snapshot %s: %s", previous, exc)
        return io.BytesIO(_SNAPSHOT_MARKER + snapshot.id.encode())

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        """Replace this session's sandbox with one restored from Ember snapshot `snapshot_id`."""
        try:
            restored = await self._connection.start(self.state.options, self.state.session_id, snapshot_id)
        except errors.EmberError as exc:
            context = {"code": exc.code, "snapshot_id": snapshot_id}
            raise WorkspaceArchiveWriteError(
                path=self._workspace_root_path(), context=context, cause=exc
            ) from exc
        await self._processes.close()
        with contextlib.suppress(errors.SandboxNotFoundError, errors.SandboxNotRunningError):
            await self.sandbox.kill()
        await self.sandbox.close()
        self.sandbox = restored
        self.state.sandbox_id = restored.id
        self.state.ember_snapshot_id = snapshot_id
        self._root_ready = True

    async def _persist_tar(self) -> io.IOBase:
        """The workspace as a tar of workspace-relative members (skip paths left out).

        The archive is spooled: a large workspace goes to a temporary file, not into memory.
        """
        root = self._workspace_root_path()
        archive = self._archive_path()
        excludes = " ".join(shell_tar_exclude_args(self._persist_workspace_skip_relpaths()))
        command = f"tar {excludes} -C {shlex.quote(sandbox_path_str(root))} -cf {shlex.quote(archive)} ."
        with contextlib.ExitStack() as until_handed_over:
            spool = until_handed_over.enter_context(tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX_BYTES))
            try:
                result = await self.exec(command)
                if not result.ok():
                    context = {"exit_code": result.exit_code, "stderr": result.stderr.decode()}
                    raise WorkspaceArchiveReadError(path=root, context=context)
                async for chunk in self.sandbox.files.iter_read(archive):
                    spool.write(chunk)
            except errors.EmberError as exc:
                raise WorkspaceArchiveReadError(path=root, context={"code": exc.code}, cause=exc) from exc
            finally:
                await self._remove_quietly(archive)
            until_handed_over.pop_all()  # the caller closes it from here on
        spool.seek(0)
        return spool

    async def _hydrate_tar(self, raw: bytes) -> None:
        """Unpack a tar made by ``_persist_tar`` under the workspace root, after vetting it."""
        root = self._workspace_root_path()
        try:
            validate_tar_bytes(raw, allow_external_symlink_targets=False)
        except UnsafeTarMemberError as exc:
            context = {"reason": "unsafe_or_invalid_tar", "member": exc.member}
            raise WorkspaceArchiveWriteError(path=root, context=context, cause=exc) from exc
        archive = self._archive_path()
        root_arg = shlex.quote(sandbox_path_str(root))
        try:
            await self.sandbox.files.mkdir(sandbox_path_str(root), parents=True)
            await self.sandbox.files.write(archive, raw)
            result = await self.exec(f"tar -C {root_arg} -xf {shlex.quote(archive)}")
        except errors.EmberError as exc:
            raise WorkspaceArchiveWriteError(path=root, context={"code": exc.code}, cause=exc) from exc
        finally:
            await self._remove_quietly(archive)
        if not result.ok():
            context = {"exit_code": result.exit_code, "stderr": result.stderr.decode()}
            raise WorkspaceArchiveWriteError(path=root, context=context)
        self._root_ready = True

    async def _remove_quietly(self, path: str) -> None:
        try:
            await self.sandbox.files.remove(path)
        except errors.EmberError as exc:  # a leftover temp file must not hide the real outcome
            logger.warning("could not remove %s from sandbox %s: %s", path, self.state.sandbox_id, exc)


@contextlib.contextmanager
def _file_errors(path: Path, *, writing: bool) -> Iterator[None]:
    """Ember's file errors as the SDK's: a missing path is ``WorkspaceReadNotFoundError``
    (what ``apply_patch`` and the manifest code test for), anything else a workspace I/O error."""
    try:
        yield
    except errors.PathNotFoundError as exc:
        raise WorkspaceReadNotFoundError(path=path, cause=exc) from exc
    except errors.EmberError as exc:
        failure = WorkspaceArchiveWriteError if writing else WorkspaceArchiveReadError
        raise failure(path=path, context={"code": exc.code}, cause=exc) from exc


def _split_user(argv: list[str]) -> tuple[list[str], str | None]:
    """Turn the SDK's ``sudo -u USER --`` prefix into Ember's own ``user`` (the guest has no sudo)."""
    if len(argv) >= 4 and argv[0] == "sudo" and argv[1] == "-u" and argv[3] == "--":
        return argv[4:], argv[2]
    return argv, None


def _file_entry(info: FileInfo) -> FileEntry:
    kind = _KINDS.get(info.type, EntryKind.OTHER)
    mode = info.mode | (stat.S_IFDIR if kind is EntryKind.DIRECTORY else 0)
    return FileEntry(
        path=info.path,
        permissions=Permissions.from_mode(mode),
        owner=info.owner,
        group=info.group,
        size=info.size,
        kind=kind,
    )
