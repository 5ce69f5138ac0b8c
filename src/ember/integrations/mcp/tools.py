"""The MCP tools: one per thing an agent does with a sandbox, each with a strict input schema.

Docstrings and ``Field`` descriptions are what the model reads, so they say what
to pass and what comes back. Bounds are checked by the schema before any call
reaches the daemon. No ``from __future__ import annotations`` here: the MCP SDK
reads these signatures to build the schemas.
"""

import base64
import posixpath
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ToolAnnotations
from pydantic import Field

from ember.client import network_policy
from ember.integrations.mcp import models
from ember.integrations.mcp.auth import caller_key
from ember.integrations.mcp.content import execution_content, file_content
from ember.integrations.mcp.errors import reports_ember_errors
from ember.integrations.mcp.sandboxes import SandboxRegistry
from ember.protocol.bounds import (
    MAX_DISK_MIB,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_DISK_MIB,
    MIN_MEMORY_MIB,
    MIN_VCPUS,
)
from ember.protocol.messages import DEFAULT_WORKDIR

#: Longest lifetime, idle time, cell or command an agent may ask for (a day; an hour per call).
MAX_LIFETIME_S = 86_400
MAX_CALL_S = 3_600
#: Largest file read_file hands to the model; bigger ones are read in parts with commands.
MAX_READ_BYTES = 8 * 1024 * 1024
MAX_LIST_DEPTH = 8
MAX_FORKS = 8
#: The kernel's virtual filesystems: their files are changed in place, which write_file (a whole-file
#: replace through a temporary file beside the target) cannot do.
VIRTUAL_FILESYSTEMS = ("/proc", "/sys", "/dev")

SandboxId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="The sandbox's id, as create_sandbox, fork_sandbox or list_sandboxes returned it.",
    ),
]
GuestPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]+$",
        description="A path in the sandbox: absolute, or relative to the working directory /app.",
    ),
]
Env = Annotated[
    dict[str, str] | None,
    Field(description="Environment variables (NAME: value).", max_length=1000),
]
CallTimeout = Annotated[
    float,
    Field(gt=0, le=MAX_CALL_S, description=f"Seconds before it is stopped (at most {MAX_CALL_S})."),
]

_READS = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_ADDS = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_CHANGES = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


class SandboxTools:
    """The tools, bound to the registry that holds the server's sandboxes.

    With `keys_from_callers` (HTTP) every call must come with the caller's own key.
    """

    def __init__(self, registry: SandboxRegistry, keys_from_callers: bool = False) -> None:
        self._registry = registry
        self._keys_from_callers = keys_from_callers

    def _sandboxes(self) -> SandboxRegistry:
        """The registry acting with the caller's API key (HTTP), or with the server's own (stdio)."""
        key = caller_key()
        if key is not None:
            return self._registry.for_key(key)
        if self._keys_from_callers:
            raise ToolError("this request carries no Ember API key [unauthorized]")
        return self._registry

    def catalogue(self) -> list[tuple[Callable[..., Awaitable[Any]], ToolAnnotations]]:
        """Every tool with its hints for clients (read-only, destructive)."""
        return [
            (self.create_sandbox, _ADDS),
            (self.run_code, _CHANGES),
            (self.run_command, _CHANGES),
            (self.write_file, _CHANGES),
            (self.read_file, _READS),
            (self.list_files, _READS),
            (self.snapshot_sandbox, _ADDS),
            (self.fork_sandbox, _ADDS),
            (self.expose_port, _ADDS),
            (self.kill_sandbox, _CHANGES),
            (self.list_sandboxes, _READS),
            (self.list_snapshots, _READS),
            (self.delete_snapshot, _CHANGES),
        ]

    @reports_ember_errors
    async def create_sandbox(
        self,
        template: Annotated[
            str | None,
            Field(description="Start from this template (see list_snapshots); default: the base image."),
        ] = None,
        snapshot: Annotated[
            str | None,
            Field(description="Resume this snapshot's id instead: its files, processes and REPL state."),
        ] = None,
        env: Env = None,
        timeout: Annotated[
            float,
            Field(gt=0, le=MAX_LIFETIME_S, description="Lifetime in seconds; it is killed after that."),
        ] = 1800,
        idle_timeout: Annotated[
            float | None,
            Field(gt=0, le=MAX_LIFETIME_S, description="Kill it after this many seconds without a call."),
        ] = None,
        vcpus: Annotated[int, Field(ge=MIN_VCPUS, le=MAX_VCPUS, description="Virtual CPUs.")] = 2,
        memory_mb: Annotated[
            int, Field(ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB, description="Memory, MiB.")
        ] = 512,
        disk_mb: Annotated[
            int | None, Field(ge=MIN_DISK_MIB, le=MAX_DISK_MIB, description="Disk size, MiB (default 4096).")
        ] = None,
        network: Annotated[
            Literal["none", "full", "allowlist"],
            Field(description="none: no network at all (default); full: internet; allowlist: only allow."),
        ] = "none",
        allow: Annotated[
            list[str] | None,
            Field(
                max_length=256,
                description="With network=allowlist: domains (api.example.com, *.example.com) and CIDRs.",
            ),
        ] = None,
        packages: Annotated[
            bool, Field(description="With network=allowlist: also the pip, apt and npm package hosts.")
        ] = False,
    ) -> models.Sandbox:
        """Start a new sandbox: a Linux microVM with Python 3, Node.js, git and a shell.

        Returns its id, which every other tool takes. Code state (variables, imports)
        persists across run_code calls. A template or snapshot brings its own vcpus,
        memory and disk. The sandbox is killed when its timeout ends or this server stops;
        snapshot_sandbox keeps its state for later.
        """
        sandbox = await self._sandboxes().create(
            template=template,
            snapshot=snapshot,
            env=env,
            timeout=timeout,
            idle_timeout=idle_timeout,
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            network=network_policy(None if network == "none" else network, allow or (), packages),
        )
        return models.Sandbox.model_validate(await sandbox.info())

    @reports_ember_errors
    async def run_code(
        self,
        sandbox_id: SandboxId,
        code: Annotated[str, Field(min_length=1, description="The code: one notebook cell.")],
        language: Annotated[Literal["python", "bash"], Field(description="python or bash.")] = "python",
        timeout: CallTimeout = 60,
    ) -> Annotated[CallToolResult, models.CodeRun]:
        """Run code in the sandbox's persistent REPL, like a notebook cell.

        Variables, imports and the working directory persist between calls. The value of
        the last expression is returned, with rich forms: images (PNG, JPEG, e.g. a
        matplotlib figure) as images, HTML, JSON and Markdown as text with their type.
        An exception in the code is reported in the result (error), not as a tool failure.
        """
        async with self._sandboxes().use(sandbox_id) as sandbox:
            execution = await sandbox.run_code(code, language=language, timeout=timeout)
        return CallToolResult(
            content=execution_content(execution),
            structured_content=models.CodeRun.model_validate(execution.to_wire()).model_dump(mode="json"),
        )

    @reports_ember_errors
    async def run_command(
        self,
        sandbox_id: SandboxId,
        command: Annotated[str, Field(min_length=1, description="A shell command line, run with bash -c.")],
        cwd: Annotated[GuestPath | None, Field(description="Working directory (default /app).")] = None,
        env: Env = None,
        timeout: CallTimeout = 60,
    ) -> models.CommandRun:
        """Run a shell command in the sandbox and wait for it: exit code, stdout, stderr.

        A non-zero exit code is a result, not a tool failure. Each command starts a fresh
        shell (use run_code with language bash for a shell whose state persists).
        """
        async with self._sandboxes().use(sandbox_id) as sandbox:
            result = await sandbox.commands.run(command, env=env, cwd=cwd, timeout=timeout)
        return models.CommandRun.model_validate(result)

    @reports_ember_errors
    async def write_file(
        self,
        sandbox_id: SandboxId,
        path: GuestPath,
        content: Annotated[str, Field(description="The file's content: text, or base64 (see encoding).")],
        encoding: Annotated[
            Literal["utf-8", "base64"], Field(description="utf-8 for text, base64 for binary data.")
        ] = "utf-8",
        mode: Annotated[
            int | None, Field(ge=0, le=0o7777, description="Permission bits as a number, e.g. 493 for 0o755.")
        ] = None,
    ) -> models.File:
        """Write a file in the sandbox, replacing it whole; parent directories are created.

        Not for /proc, /sys or /dev: change those with run_command (e.g. echo 1 > /proc/...).
        """
        _refuse_virtual_filesystems(path)
        data = _decode(content, encoding)
        async with self._sandboxes().use(sandbox_id) as sandbox:
            return models.File.model_validate(await sandbox.files.write(path, data, mode=mode))

    @reports_ember_errors
    async def read_file(self, sandbox_id: SandboxId, path: GuestPath) -> ContentBlock:
        """Read a file from the sandbox: text as text, PNG/JPEG/GIF as an image, other bytes as base64."""
        async with self._sandboxes().use(sandbox_id) as sandbox:
            info = await sandbox.files.stat(path)
            if info.type == "dir":
                raise ToolError(f"{info.path} is a directory [is_a_directory]: call list_files on it.")
            if info.size > MAX_READ_BYTES:
                raise ToolError(
                    f"{info.path} has {info.size} bytes, more than read_file returns ({MAX_READ_BYTES}) "
                    "[payload_too_large]: read parts of it with run_command (head, tail, grep)."
                )
            data = await sandbox.files.read(path)
        return file_content(data, f"ember://{sandbox_id}{info.path}")

    @reports_ember_errors
    async def list_files(
        self,
        sandbox_id: SandboxId,
        path: GuestPath = "/app",
        depth: Annotated[
            int, Field(ge=1, le=MAX_LIST_DEPTH, description="Levels to descend (1: the entries of path).")
        ] = 1,
    ) -> models.Listing:
        """List a directory in the sandbox: each entry's path, type, size, mode and mtime."""
        async with self._sandboxes().use(sandbox_id) as sandbox:
            entries = await sandbox.files.list(path, depth=depth)
        return models.Listing(path=path, entries=[models.File.model_validate(entry) for entry in entries])

    @reports_ember_errors
    async def snapshot_sandbox(self, sandbox_id: SandboxId) -> models.Snapshot:
        """Save the sandbox whole (memory, processes, REPL state, files); it keeps running.

        create_sandbox(snapshot=<id>) starts copies of it later, even after this server stops.
        """
        async with self._sandboxes().use(sandbox_id) as sandbox:
            return models.Snapshot.model_validate(await sandbox.snapshot())

    @reports_ember_errors
    async def fork_sandbox(
        self,
        sandbox_id: SandboxId,
        count: Annotated[int, Field(ge=1, le=MAX_FORKS, description="How many copies.")] = 1,
    ) -> models.Sandboxes:
        """Copy a running sandbox: each fork has its state now (REPL, files, processes) and a new id.

        The original runs on unchanged; use forks to try alternatives side by side.
        """
        sandboxes = self._sandboxes()
        async with sandboxes.use(sandbox_id) as sandbox:
            forks = await sandbox.fork(count)
        sandboxes.adopt(forks)
        return models.Sandboxes(
            sandboxes=[models.Sandbox.model_validate(await fork.info()) for fork in forks]
        )

    @reports_ember_errors
    async def expose_port(
        self,
        sandbox_id: SandboxId,
        port: Annotated[int, Field(ge=1, le=65535, description="The port a server listens on (0.0.0.0).")],
    ) -> models.ExposedPort:
        """Make a server inside the sandbox reachable at a URL (the sandbox needs a network).

        Opening the URL needs the token: header X-Ember-Port-Token, or ?ember_token=<token>.
        """
        async with self._sandboxes().use(sandbox_id) as sandbox:
            return models.ExposedPort.model_validate(await sandbox.expose(port))

    @reports_ember_errors
    async def kill_sandbox(self, sandbox_id: SandboxId) -> str:
        """Stop a sandbox now and discard it (snapshot it first to keep its state)."""
        await self._sandboxes().kill(sandbox_id)
        return f"killed sandbox {sandbox_id}"

    @reports_ember_errors
    async def list_sandboxes(self) -> models.Sandboxes:
        """The running sandboxes your API key can use (over stdio: the server's key)."""
        return models.Sandboxes(
            sandboxes=[models.Sandbox.model_validate(info) for info in await self._sandboxes().list()]
        )

    @reports_ember_errors
    async def list_snapshots(self) -> models.Snapshots:
        """The templates and snapshots sandboxes can start from (create_sandbox template= or snapshot=)."""
        found = await self._sandboxes().list_snapshots()
        return models.Snapshots(snapshots=[models.Snapshot.model_validate(info) for info in found])

    @reports_ember_errors
    async def delete_snapshot(
        self,
        snapshot_id: Annotated[str, Field(min_length=1, max_length=128, description="The snapshot's id.")],
    ) -> str:
        """Delete a snapshot; sandboxes already started from it keep running."""
        await self._sandboxes().delete_snapshot(snapshot_id)
        return f"deleted snapshot {snapshot_id}"


def _refuse_virtual_filesystems(path: str) -> None:
    absolute = "/" + posixpath.normpath(posixpath.join(DEFAULT_WORKDIR, path)).lstrip("/")
    for root in VIRTUAL_FILESYSTEMS:
        if absolute == root or absolute.startswith(root + "/"):
            raise ToolError(
                f"{absolute} is in {root}, a kernel virtual filesystem that write_file cannot change "
                f"[invalid_request]: use run_command, e.g. echo VALUE > {absolute}"
            )


def _decode(content: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except ValueError as exc:
        raise ToolError(f"content is not valid base64 ({exc}) [invalid_request]") from exc
