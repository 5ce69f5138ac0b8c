"""The guest agent: PID 1's long-running half, serving the host over the agent port.

One handler per operation, each short; the heavy lifting lives in the modules
named for what they own (processes, repl, files, system).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal as signals
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ember.agent import extents, files, image, network, registries, system, watch
from ember.agent._errors import AgentError
from ember.agent.paths import WORKDIR
from ember.agent.port import SocketPort, VirtioPort, find_port
from ember.agent.processes import ProcessTable, check_env, stream_output
from ember.agent.repl import ReplContexts
from ember.agent.session import RequestContext, Session
from ember.protocol import messages as m
from ember.protocol.codes import ErrorCode
from ember.protocol.wire import WireModel

log = logging.getLogger("ember.agent")

DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
# How long a Configure waits for the default interpreter to start (~1 s under TCG; much
# longer on a loaded host). Shorter than the host's wait for that answer (30 s), so that a
# slow start costs the first cell a wait rather than the sandbox its boot.
_REPL_START_S = 20.0


class Agent:
    """Routes each request to its handler; owns the process table and REPL contexts."""

    def __init__(self) -> None:
        self.processes = ProcessTable()
        self.contexts = ReplContexts(self.processes)
        self._handlers: dict[
            type[m.Request], Callable[[RequestContext, Any], Awaitable[WireModel | None]]
        ] = {
            m.Configure: self.configure,
            m.Ping: self.ping,
            m.RunCode: self.run_code,
            m.ContextCreate: self.context_create,
            m.ContextList: self.context_list,
            m.ContextDelete: self.context_delete,
            m.ContextRestart: self.context_restart,
            m.Exec: self.exec,
            m.ProcAttach: self.proc_attach,
            m.ProcList: self.proc_list,
            m.ProcInput: self.proc_input,
            m.ProcSignal: self.proc_signal,
            m.ProcResize: self.proc_resize,
            m.FileWrite: self.file_write,
            m.FileRead: self.file_read,
            m.FileList: self.file_list,
            m.FileStat: self.file_stat,
            m.FileMkdir: self.file_mkdir,
            m.FileRemove: self.file_remove,
            m.FileRename: self.file_rename,
            m.FileWatch: self.file_watch,
        }

    async def handle(self, context: RequestContext, request: m.Request) -> WireModel | None:
        return await self._handlers[type(request)](context, request)

    # ------------------------------------------------------------ system

    async def configure(self, context: RequestContext, request: m.Configure) -> m.AgentInfo:
        check_env(request.env)
        if request.time_ns is not None:
            system.set_clock(request.time_ns)
        if request.entropy_b64 is not None:
            system.add_entropy(request.entropy_b64)
            self.contexts.reseed()
        if request.hostname is not None:
            system.set_hostname(request.hostname)
        if request.network is not None and network.changes(request.network):
            await asyncio.to_thread(network.configure, request.network)
        if request.registries is not None and registries.changes(request.registries):
            await asyncio.to_thread(registries.configure, request.registries)
        if request.env is not None:
            self.processes.base_env = dict(request.env)
            self.contexts.set_env(request.env)
        # Warm the default Python REPL now so the first run_code does not pay for it,
        # and answer once it has started: a snapshot (a template, a fork) is then warm.
        # An image without Python has none to warm (its run_code says so).
        try:
            repl = self.contexts.default("python")
        except AgentError as exc:
            if exc.code is not ErrorCode.PYTHON_UNAVAILABLE:
                raise
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(repl.wait_started(), _REPL_START_S)
        return await self.ping(context, m.Ping())

    async def ping(self, context: RequestContext, request: m.Ping) -> m.AgentInfo:
        return m.AgentInfo(
            version=m.PROTOCOL_VERSION,
            pid=os.getpid(),
            python=platform.python_version(),
            hostname=system.hostname(),
            kernel=system.kernel_release(),
        )

    # ------------------------------------------------------------ REPL

    async def run_code(self, context: RequestContext, request: m.RunCode) -> m.Execution:
        if request.context_id is not None:
            repl = self.contexts.get(request.context_id)
        elif request.language in ("python", "bash"):
            repl = self.contexts.default(request.language)
        else:
            raise AgentError(ErrorCode.INVALID_REQUEST, f"unsupported language {request.language!r}")
        if request.timeout_s is not None and request.timeout_s <= 0:
            raise AgentError(ErrorCode.INVALID_REQUEST, "timeout must be positive")
        if request.scratch and repl.language != "python":
            raise AgentError(ErrorCode.INVALID_REQUEST, "only Python runs scratch code")
        check_env(request.env)
        return await repl.run(
            request.code, request.timeout_s, request.env, context.stdout, context.stderr, request.scratch
        )

    async def context_create(self, context: RequestContext, request: m.ContextCreate) -> m.ContextInfo:
        return self.contexts.create(request.language, request.cwd).info()

    async def context_list(self, context: RequestContext, request: m.ContextList) -> m.ContextListing:
        return m.ContextListing(contexts=[c.info() for c in self.contexts.list()])

    async def context_delete(self, context: RequestContext, request: m.ContextDelete) -> None:
        self.contexts.delete(request.context_id)

    async def context_restart(self, context: RequestContext, request: m.ContextRestart) -> m.ContextInfo:
        repl = self.contexts.get(request.context_id)
        repl.restart()
        return repl.info()

    # ------------------------------------------------------------ processes

    async def exec(self, context: RequestContext, request: m.Exec) -> WireModel:
        if (request.cmd is None) == (request.argv is None):
            raise AgentError(ErrorCode.INVALID_REQUEST, "give exactly one of cmd and argv")
        check_env(request.env)
        if request.login_shell:
            argv = [image.shell(), "-l"]
        elif request.cmd is not None:
            argv = [image.shell(), "-c", request.cmd]
        else:
            argv = list(request.argv or [])
        process = self.processes.spawn(
            argv,
            cmd=request.cmd,
            env=request.env,
            cwd=files.resolve(request.cwd or WORKDIR),
            user=request.user,
            pty=request.pty,
            stdin=request.stdin,
            tag=request.tag,
            timeout_s=request.timeout_s,
        )
        if request.background:
            return m.ProcessStarted(pid=process.pid)
        context.event("started", m.ProcessStarted(pid=process.pid))
        limit = request.max_output_bytes or DEFAULT_MAX_OUTPUT_BYTES
        truncated = await self._stream(context, process, replay=True, limit_bytes=limit)
        return process.exit_result(truncated)

    async def _stream(
        self, context: RequestContext, process: Any, replay: bool, limit_bytes: int | None
    ) -> bool:
        return await stream_output(
            process,
            {"stdout": context.stdout, "stderr": context.stderr},
            replay=replay,
            limit_bytes=limit_bytes,
            on_gap=lambda name, lost: context.event("gap", {"stream": name, "lost_bytes": lost}),
        )

    async def proc_attach(self, context: RequestContext, request: m.ProcAttach) -> m.ProcessExit:
        process = self.processes.get(request.pid)
        truncated = await self._stream(context, process, replay=request.replay, limit_bytes=None)
        return process.exit_result(truncated)

    async def proc_list(self, context: RequestContext, request: m.ProcList) -> m.ProcessListing:
        return m.ProcessListing(processes=[p.info() for p in self.processes.list()])

    async def proc_input(self, context: RequestContext, request: m.ProcInput) -> None:
        process = self.processes.get(request.pid)
        async for chunk in context.body():
            await process.write_input(chunk)
        if request.eof:
            process.close_input()

    async def proc_signal(self, context: RequestContext, request: m.ProcSignal) -> None:
        name = request.signal.upper()
        number = getattr(signals, name if name.startswith("SIG") else f"SIG{name}", None)
        if not isinstance(number, signals.Signals):
            raise AgentError(ErrorCode.INVALID_REQUEST, f"unknown signal {request.signal!r}")
        self.processes.get(request.pid).kill(number, group=request.group)

    async def proc_resize(self, context: RequestContext, request: m.ProcResize) -> None:
        self.processes.get(request.pid).resize(request.size)

    # ------------------------------------------------------------ files

    async def file_write(self, context: RequestContext, request: m.FileWrite) -> m.FileInfo:
        return await files.write(
            request.path, context.body(), request.mode, request.append, request.make_parents
        )

    async def file_read(self, context: RequestContext, request: m.FileRead) -> m.FileInfo:
        return await files.read(
            request.path,
            request.offset,
            request.length,
            lambda info: context.event("info", info),
            context.data,
            context.lent_extent if request.extents and extents.available() else None,
            context.filled,
        )

    async def file_list(self, context: RequestContext, request: m.FileList) -> m.FileListing:
        return m.FileListing(entries=await files.list_dir(request.path, request.depth))

    async def file_stat(self, context: RequestContext, request: m.FileStat) -> m.FileInfo:
        return files.stat_path(request.path)

    async def file_mkdir(self, context: RequestContext, request: m.FileMkdir) -> m.FileInfo:
        return files.mkdir(request.path, request.parents, request.exist_ok)

    async def file_remove(self, context: RequestContext, request: m.FileRemove) -> None:
        await files.remove(request.path, request.recursive)

    async def file_rename(self, context: RequestContext, request: m.FileRename) -> m.FileInfo:
        return await files.rename(request.source, request.destination, request.overwrite)

    async def file_watch(self, context: RequestContext, request: m.FileWatch) -> None:
        await watch.watch(
            request.path,
            request.recursive,
            lambda: context.event("watching"),
            lambda name, kind: context.event("change", m.FileChange(name=name, kind=kind)),
        )


async def serve(listen: str | None) -> None:
    agent = Agent()
    port: VirtioPort | SocketPort
    if listen is None:
        system.bring_up_loopback()
        port = VirtioPort(find_port())
    else:
        port = SocketPort(listen)
    log.info("ember agent ready (pid %d)", os.getpid())
    await Session(port, agent.handle).run()


def main() -> None:
    """In the guest: serve the virtio port. ``--listen PATH``: a unix socket, for tests.

    (No argparse: every import costs boot time under TCG.)
    """
    arguments = sys.argv[1:]
    listen = arguments[1] if arguments[:1] == ["--listen"] and len(arguments) == 2 else None
    if arguments and listen is None:
        sys.exit("usage: python -m ember.agent [--listen SOCKET_PATH]")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="ember-agent: %(message)s")
    asyncio.run(serve(listen))
