"""``AsyncSandbox``: one microVM sandbox seen through the daemon's HTTP API.

Its abilities are sub-objects sharing one HTTP connection: ``contexts`` (REPL
contexts), ``commands``, ``files`` and ``pty``; code runs with ``run_code()``.
This file is the single source of the SDK: the sync ``Sandbox`` is generated
from it by ``scripts/unasync.py`` (async names map to their sync twins), so the
two can never drift apart. The few real differences are pairs in ``_backends``.
"""

from __future__ import annotations

import builtins
import enum
from typing import Any, Self

from ember import errors
from ember.client._async.commands import AsyncCommands
from ember.client._async.contexts import AsyncContexts, context_id_of
from ember.client._async.files import AsyncFiles
from ember.client._async.network import AsyncNetwork
from ember.client._async.pty import AsyncPty
from ember.client._async.transport import AsyncTransport, TextCallback
from ember.client._config import DEFAULT_REQUEST_TIMEOUT_S, resolve_config
from ember.client._models import (
    Execution,
    PoolInfo,
    PortInfo,
    SandboxInfo,
    SnapshotInfo,
    parse,
    parse_list,
)
from ember.client._stream import result_of
from ember.protocol.messages import ContextInfo

#: True in the generated sync code, whose ``Sandbox(...)`` creates its sandbox at once as
#: users expect; an async constructor cannot await, so there creation waits for
#: ``create()`` or the ``async with`` block. The generator flips this one constant.
CREATES_IN_INIT = False


class _Lifecycle(enum.Enum):
    NEW = "new"  # described, not created yet (async only: before create() or async with)
    OPEN = "open"  # bound to a sandbox
    KILLED = "killed"  # this object killed its sandbox; info() still works
    CLOSED = "closed"  # close() released the HTTP connection


class AsyncSandbox:
    """A sandbox: ``await AsyncSandbox.create(...)`` or ``async with AsyncSandbox(...) as sandbox``.

    ``close()`` (and leaving ``async with``) kills the sandbox if this object created
    it; an object from ``connect()`` only lets go of its HTTP connection and leaves
    the sandbox running. ``timeout`` is the sandbox's lifetime in seconds (None: no
    limit); ``idle_timeout`` ends it after that long without API calls.
    """

    def __init__(
        self,
        vcpus: int = 2,
        memory_mb: int = 512,
        env: dict[str, str] | None = None,
        timeout: float | None = 300,
        idle_timeout: float | None = None,
        template: str | None = None,
        metadata: dict[str, str] | None = None,
        disk_mb: int | None = None,
        snapshot: str | None = None,
        network: str | dict[str, Any] | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._bind(AsyncTransport(resolve_config(api_key, base_url, request_timeout)), owned=True)
        self._spec: dict[str, Any] = {"vcpus": vcpus, "memory_mb": memory_mb, "timeout": timeout}
        optional = {"env": env, "idle_timeout": idle_timeout, "template": template}
        optional.update(metadata=metadata, disk_mb=disk_mb, snapshot=snapshot, network=network)
        self._spec.update({key: value for key, value in optional.items() if value is not None})
        if CREATES_IN_INIT:
            self._create()  # only in the generated sync code; see CREATES_IN_INIT

    @classmethod
    async def create(
        cls,
        vcpus: int = 2,
        memory_mb: int = 512,
        env: dict[str, str] | None = None,
        timeout: float | None = 300,
        idle_timeout: float | None = None,
        template: str | None = None,
        metadata: dict[str, str] | None = None,
        disk_mb: int | None = None,
        snapshot: str | None = None,
        network: str | dict[str, Any] | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> Self:
        """Create a sandbox and wait until it runs; ``close()`` will kill it.

        With ``template`` (a name) or ``snapshot`` (an id) it resumes that saved
        sandbox, REPL state and all, with its vcpus, memory and disk. ``network``
        is its policy: ``"none"`` (default: no interface), ``"full"``, or
        ``{"domains": [...], "cidrs": [...], "packages": bool}`` (an allowlist).
        """
        sandbox = cls(
            vcpus, memory_mb, env, timeout, idle_timeout, template, metadata, disk_mb, snapshot, network,
            api_key=api_key, base_url=base_url, request_timeout=request_timeout,
        )  # fmt: skip
        await sandbox._create()
        return sandbox

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> Self:
        """Join an existing sandbox; ``close()`` will leave it running."""
        sandbox = cls.__new__(cls)
        sandbox._bind(AsyncTransport(resolve_config(api_key, base_url, request_timeout)), owned=False)
        try:
            data = await sandbox._transport.json("GET", f"/v1/sandboxes/{sandbox_id}")
        except BaseException:
            await sandbox.close()
            raise
        sandbox._open(parse(SandboxInfo, data))
        return sandbox

    @classmethod
    async def list(
        cls,
        metadata: dict[str, str] | None = None,
        all: bool = False,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> builtins.list[SandboxInfo]:
        """The caller's running sandboxes (``all=True``: ended ones too), filtered by metadata."""
        params = [("state", "all")] if all else []
        params += [("metadata", f"{key}:{value}") for key, value in (metadata or {}).items()]
        transport = AsyncTransport(resolve_config(api_key, base_url, request_timeout))
        try:
            data = await transport.json("GET", "/v1/sandboxes", params=params)
        finally:
            await transport.aclose()
        return parse_list(SandboxInfo, data, "sandboxes")

    @classmethod
    async def list_snapshots(
        cls, *, api_key: str | None = None, base_url: str | None = None
    ) -> builtins.list[SnapshotInfo]:
        """The caller's snapshots (templates are listed by ``list_templates``)."""
        data = await _one_call("GET", "/v1/snapshots", api_key, base_url)
        return parse_list(SnapshotInfo, data, "snapshots")

    @classmethod
    async def delete_snapshot(
        cls, snapshot_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> None:
        """Delete a snapshot; sandboxes already restored from it keep running."""
        await _one_call("DELETE", f"/v1/snapshots/{snapshot_id}", api_key, base_url)

    @classmethod
    async def list_templates(
        cls, *, api_key: str | None = None, base_url: str | None = None
    ) -> builtins.list[SnapshotInfo]:
        """The templates every key can start sandboxes from (``template=name``)."""
        data = await _one_call("GET", "/v1/templates", api_key, base_url)
        return parse_list(SnapshotInfo, data, "snapshots")

    @classmethod
    async def delete_template(
        cls, name: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> None:
        """Delete a template (admin keys only); sandboxes started from it keep running."""
        await _one_call("DELETE", f"/v1/templates/{name}", api_key, base_url)

    @classmethod
    async def pool_stats(
        cls, *, api_key: str | None = None, base_url: str | None = None
    ) -> builtins.list[PoolInfo]:
        """The daemon's warm pools: sandboxes kept restored and ready, per template."""
        return parse_list(PoolInfo, await _one_call("GET", "/v1/pool", api_key, base_url), "pools")

    # ------------------------------------------------------------ lifecycle

    def _bind(self, transport: AsyncTransport, owned: bool) -> None:
        self._transport = transport
        self._owned = owned
        self._lifecycle = _Lifecycle.NEW
        self._info: SandboxInfo | None = None

    def _open(self, info: SandboxInfo) -> None:
        self._info = info
        self._path = f"/v1/sandboxes/{info.id}"
        self._contexts = AsyncContexts(self._transport, self._path)
        self._commands = AsyncCommands(self._transport, self._path)
        self._files = AsyncFiles(self._transport, self._path)
        self._pty = AsyncPty(self._transport, self._path)
        self._network = AsyncNetwork(self._transport, self._path)
        self._lifecycle = _Lifecycle.OPEN

    async def _create(self) -> None:
        if self._lifecycle is not _Lifecycle.NEW:
            return
        try:
            data = await self._transport.json("POST", "/v1/sandboxes", json=self._spec, waits=True)
        except BaseException:
            await self.close()
            raise
        self._open(parse(SandboxInfo, data))

    def _require_open(self) -> SandboxInfo:
        """The one guard: every call on a sandbox passes through here."""
        if self._lifecycle is _Lifecycle.NEW:
            raise RuntimeError(
                "this AsyncSandbox was not created yet: use `await AsyncSandbox.create(...)` "
                "or `async with AsyncSandbox(...) as sandbox`"
            )
        if self._lifecycle is _Lifecycle.CLOSED or self._info is None:
            raise RuntimeError("this sandbox object was closed; AsyncSandbox.connect(id) reaches it again")
        return self._info

    async def __aenter__(self) -> Self:
        await self._create()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Kill the sandbox if this object created it, then release the HTTP connection.

        A sandbox joined with ``connect()`` keeps running. Calling close() again does nothing.
        """
        if self._lifecycle is _Lifecycle.CLOSED:
            return
        try:
            if self._lifecycle is not _Lifecycle.NEW:
                await self._pty._close_all()
            if self._owned and self._lifecycle is _Lifecycle.OPEN:
                try:
                    await self.kill()
                except (errors.SandboxNotFoundError, errors.SandboxNotRunningError):
                    pass  # it already ended (its lifetime ran out, or someone else killed it)
        finally:
            self._lifecycle = _Lifecycle.CLOSED
            await self._transport.aclose()

    def detach(self) -> None:
        """Let ``close()`` leave the sandbox running, as for one joined with ``connect()``.

        For code that hands a sandbox on (its id saved for a later ``connect()``); its
        lifetime and idle timeout still end it.
        """
        self._require_open()
        self._owned = False

    async def kill(self) -> None:
        """End the sandbox now. This object stays usable for ``info()`` until ``close()``."""
        self._require_open()
        await self._transport.request("DELETE", self._path)
        self._lifecycle = _Lifecycle.KILLED

    # ------------------------------------------------------------ description

    @property
    def id(self) -> str:
        """The sandbox's id (still readable after ``close()``)."""
        if self._info is None:
            return self._require_open().id  # not created: the guard says how to create it
        return self._info.id

    async def info(self) -> SandboxInfo:
        """The sandbox as the daemon sees it now (state, lifetime, end reason)."""
        self._require_open()
        self._info = parse(SandboxInfo, await self._transport.json("GET", self._path))
        return self._info

    async def set_timeout(self, timeout: float | None) -> SandboxInfo:
        """End the sandbox `timeout` seconds from now (None: no limit)."""
        self._require_open()
        data = await self._transport.json("POST", f"{self._path}/timeout", json={"timeout": timeout})
        self._info = parse(SandboxInfo, data)
        return self._info

    # ------------------------------------------------------------ snapshots and forks

    async def snapshot(self, metadata: dict[str, str] | None = None) -> SnapshotInfo:
        """Freeze this sandbox (memory, processes, disk) into a snapshot; it runs on.

        ``AsyncSandbox.create(snapshot=info.id)`` starts copies of it.
        """
        self._require_open()
        body = {"metadata": metadata or {}}
        return parse(
            SnapshotInfo, await self._transport.json("POST", f"{self._path}/snapshots", json=body, waits=True)
        )

    async def fork(self, n: int = 1) -> builtins.list[Self]:
        """``n`` new running sandboxes identical to this one now; this one runs on unchanged.

        Each fork has its own id, hostname, clock and entropy; ``close()`` on a fork kills it.
        """
        self._require_open()
        data = await self._transport.json("POST", f"{self._path}/fork", json={"count": n}, waits=True)
        forks = []
        for info in parse_list(SandboxInfo, data, "sandboxes"):
            fork = type(self).__new__(type(self))
            fork._bind(AsyncTransport(self._transport.config), owned=True)
            fork._open(info)
            forks.append(fork)
        return forks

    async def save_template(self, name: str) -> SnapshotInfo:
        """Snapshot this sandbox as template ``name`` (admin keys only), replacing an older one."""
        self._require_open()
        body = {"name": name}
        return parse(
            SnapshotInfo, await self._transport.json("POST", f"{self._path}/template", json=body, waits=True)
        )

    # ------------------------------------------------------------ abilities

    @property
    def contexts(self) -> AsyncContexts:
        """REPL contexts: separate interpreters with their own state and working directory."""
        self._require_open()
        return self._contexts

    @property
    def commands(self) -> AsyncCommands:
        """Shell commands: foreground, streamed, or in the background with a handle."""
        self._require_open()
        return self._commands

    @property
    def files(self) -> AsyncFiles:
        """The sandbox's filesystem (relative paths are under /app)."""
        self._require_open()
        return self._files

    @property
    def pty(self) -> AsyncPty:
        """Interactive terminals."""
        self._require_open()
        return self._pty

    @property
    def network(self) -> AsyncNetwork:
        """The network policy (``update``) and exposed ports (``expose``, ``unexpose``, ``ports``)."""
        self._require_open()
        return self._network

    async def expose(self, port: int) -> PortInfo:
        """Serve guest ``port`` through the daemon (the sandbox needs a network); returns its URL."""
        return await self.network.expose(port)

    # ------------------------------------------------------------ code

    async def run_code(
        self,
        code: str,
        language: str = "python",
        context: ContextInfo | str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
    ) -> Execution:
        """Run a cell in a persistent REPL (``python`` or ``bash``); state carries over between calls.

        An exception in the code is reported in ``Execution.error``, not raised. With
        callbacks the output streams to them as it is printed.
        """
        return await self._run_cell("code", code, language, context, timeout, env, on_stdout, on_stderr)

    async def execute(
        self,
        code: str,
        language: str = "python",
        context: ContextInfo | str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
    ) -> Execution:
        """``run_code()`` under InstaVM's name; the result reads as a dict too (``r["stdout"]``)."""
        return await self._run_cell("execute", code, language, context, timeout, env, on_stdout, on_stderr)

    async def _run_cell(
        self,
        route: str,
        code: str,
        language: str,
        context: ContextInfo | str | None,
        timeout: float | None,
        env: dict[str, str] | None,
        on_stdout: TextCallback | None,
        on_stderr: TextCallback | None,
    ) -> Execution:
        self._require_open()
        path = f"{self._path}/{route}"
        body = {
            "code": code,
            "language": language,
            "context_id": context_id_of(context),
            "timeout": timeout,
            "env": env,
        }
        if on_stdout is None and on_stderr is None:
            return parse(Execution, await self._transport.json("POST", path, json=body, waits=True))
        event, output = await self._transport.events(
            "POST", path, json=body, on_stdout=on_stdout, on_stderr=on_stderr
        )
        return parse(Execution, output.fill(result_of(event, "execution")))

    def __repr__(self) -> str:
        sandbox_id = self._info.id if self._info is not None else None
        return f"<{type(self).__name__} id={sandbox_id} {self._lifecycle.value}>"


async def _one_call(method: str, path: str, api_key: str | None, base_url: str | None) -> Any:
    transport = AsyncTransport(resolve_config(api_key, base_url, DEFAULT_REQUEST_TIMEOUT_S))
    try:
        if method == "DELETE":
            await transport.request(method, path)
            return None
        return await transport.json(method, path)
    finally:
        await transport.aclose()
