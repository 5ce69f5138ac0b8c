"""Building templates: boot (or start from a template), run the steps, save the result.

A template is a snapshot with a name: every sandbox started from it begins where
the build left off, REPL warm and packages installed. The steps run in one
sandbox that is killed at the end whether the build worked or not, so a failed
step leaves no template and no sandbox behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ember import errors
from ember.client._async.sandbox import AsyncSandbox
from ember.client._async.transport import AsyncTransport, TextCallback
from ember.client._backends import aemit
from ember.client._config import resolve_config
from ember.client._models import SnapshotInfo, parse
from ember.client._stream import result_of

#: The most output of a failed step that its error carries.
FAILED_OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class Step:
    """One build step: a shell command to ``run``, a local file or directory to ``copy``
    to a path, or Python ``code`` for the REPL (its imports stay warm in the template)."""

    run: str | None = None
    copy: tuple[str, str] | None = None
    code: str | None = None

    def describe(self) -> str:
        if self.copy is not None:
            return f"copy {self.copy[0]} -> {self.copy[1]}"
        if self.code is not None:
            return f"code {self.code}"
        return f"run {self.run}"


async def build_template(
    name: str,
    steps: list[Step],
    base: str | None = None,
    env: dict[str, str] | None = None,
    vcpus: int = 2,
    memory_mb: int = 512,
    disk_mb: int | None = None,
    step_timeout: float | None = 1800,
    on_output: TextCallback | None = None,
    on_step: TextCallback | None = None,
    *,
    from_oci: str | None = None,
    registry_auth: tuple[str, str] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
) -> SnapshotInfo:
    """Build template ``name`` from ``base`` (a template; None: a fresh boot) and return it.

    ``from_oci`` starts from an OCI image instead: a registry reference
    (``host:port/repo:tag``, with ``registry_auth`` as (user, password) if it asks), or an
    OCI layout directory or archive (OCI or ``docker save``) on the daemon's host. The
    daemon imports it (cached by its digest) and boots it; ``on_step`` hears each stage
    of that (pull, unpack, mkfs, boot, snapshot). The steps, if any, then run on it.
    ``on_step`` hears each step's description as it starts, ``on_output`` its output.
    A step that exits non-zero raises ``TemplateBuildFailedError`` with its output.
    """
    if from_oci is not None:
        if base is not None:
            raise errors.InvalidRequestError("give base or from_oci, not both")
        imported = await _import_oci(
            name, from_oci, vcpus, memory_mb, disk_mb, registry_auth, on_step, api_key, base_url
        )
        if not steps and not env:
            return imported
        base = name
    sandbox = await AsyncSandbox.create(
        vcpus, memory_mb, env, 4 * 3600, None, base, {"template_build": name}, disk_mb,
        api_key=api_key, base_url=base_url,
    )  # fmt: skip
    try:
        for number, step in enumerate(steps, 1):
            if on_step is not None:
                on_step(f"step {number}/{len(steps)}: {step.describe()}")
            if step.copy is not None:
                await _copy(sandbox, Path(step.copy[0]), step.copy[1])
            elif step.run is not None:
                await _run(sandbox, number, step.run, step_timeout, on_output)
            elif step.code is not None:
                await _code(sandbox, number, step.code, step_timeout, on_output)
        return await sandbox.save_template(name)
    finally:
        await sandbox.close()


async def _import_oci(
    name: str,
    reference: str,
    vcpus: int,
    memory_mb: int,
    disk_mb: int | None,
    registry_auth: tuple[str, str] | None,
    on_step: TextCallback | None,
    api_key: str | None,
    base_url: str | None,
) -> SnapshotInfo:
    body: dict[str, Any] = {"name": name, "from_oci": reference, "vcpus": vcpus, "memory_mb": memory_mb}
    if disk_mb is not None:
        body["disk_mb"] = disk_mb
    if registry_auth is not None:
        body["registry_username"], body["registry_password"] = registry_auth

    async def stage(event: dict[str, Any]) -> None:
        if event["type"] == "stage":
            await aemit(on_step, str(event.get("name")))

    transport = AsyncTransport(resolve_config(api_key, base_url))
    try:
        event, _ = await transport.events("POST", "/v1/templates", json=body, on_event=stage)
    finally:
        await transport.aclose()
    return parse(SnapshotInfo, result_of(event, "template"))


async def _run(
    sandbox: AsyncSandbox, number: int, cmd: str, timeout: float | None, on_output: TextCallback | None
) -> None:
    output: list[str] = []

    def hear(text: str) -> None:
        output.append(text)
        if on_output is not None:
            on_output(text)

    result = await sandbox.commands.run(cmd, timeout=timeout, on_stdout=hear, on_stderr=hear)
    if result.exit_code != 0:
        how = "timed out" if result.timed_out else f"exited with status {result.exit_code}"
        tail = "".join(output)[-FAILED_OUTPUT_CHARS:]
        raise errors.TemplateBuildFailedError(f"step {number} ({cmd}) {how}; its output:\n{tail}")


async def _code(
    sandbox: AsyncSandbox, number: int, code: str, timeout: float | None, on_output: TextCallback | None
) -> None:
    execution = await sandbox.run_code(code, timeout=timeout, on_stdout=on_output, on_stderr=on_output)
    if execution.error is not None:
        error = execution.error
        output = (execution.stdout + execution.stderr + error.traceback)[-FAILED_OUTPUT_CHARS:]
        raise errors.TemplateBuildFailedError(
            f"step {number} (code) raised {error.name}: {error.value}; its output:\n{output}"
        )


async def _copy(sandbox: AsyncSandbox, local: Path, remote: str) -> None:
    if local.is_file():
        await sandbox.files.upload_file(local, remote)
        return
    if not local.is_dir():
        raise errors.InvalidRequestError(f"{local} is neither a file nor a directory")
    for directory, _, files in os.walk(local):
        relative = Path(directory).relative_to(local)
        target = PurePosixPath(remote, *relative.parts)
        await sandbox.files.mkdir(str(target))
        for file in files:
            await sandbox.files.upload_file(Path(directory, file), str(target / file))
