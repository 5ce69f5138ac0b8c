"""``ember execute`` and ``ember run``: run code in a sandbox, output streamed to this terminal.

``execute`` runs a cell in the sandbox's persistent REPL (python or bash): the exit
status is 0 when it ran without error, 1 when it raised, timed out or (bash) failed,
and ``sys.exit(n)``'s n as ``python -c`` would give it; a Python traceback goes to
stderr. ``run FILE.py`` does the same with a file; ``run FILE.sh`` runs the script as
a command (``bash -c``, so ``exit`` ends the script, not a shared shell) and exits
with the script's own status.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ember.cli._output import print_failure, write_stderr, write_stdout
from ember.client import Execution
from ember.client._oneshot import OneShot

_LANGUAGE_BY_SUFFIX = {".py": "python", ".sh": "bash", ".bash": "bash"}
_DEFAULT_LIFETIME_S = 300.0

Language = Annotated[str, typer.Option("--language", "-l", help="python or bash.")]
Timeout = Annotated[float | None, typer.Option("--timeout", "-t", help="Seconds before the code is stopped.")]
Template = Annotated[str | None, typer.Option("--template", help="Template for the new sandbox.")]
SandboxId = Annotated[
    str | None, typer.Option("--sandbox", "-s", help="Run in this sandbox instead of a new one.")
]


def execute(
    code: Annotated[str, typer.Option("--code", "-c", help="The code to run.")],
    language: Language = "python",
    timeout: Timeout = None,
    template: Template = None,
    sandbox: SandboxId = None,
) -> None:
    """Run code in a new sandbox (killed afterwards) or in --sandbox ID."""
    raise typer.Exit(run_cell(code, language, timeout, template, sandbox))


def run(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .py or .sh file.")],
    timeout: Timeout = None,
    template: Template = None,
    sandbox: SandboxId = None,
) -> None:
    """Run a local Python (.py) or shell (.sh) file in a sandbox, like `execute`."""
    language = _LANGUAGE_BY_SUFFIX.get(file.suffix)
    if language is None:
        print_failure(f"cannot tell the language of {file.name}: use a .py or .sh file")
        raise typer.Exit(1)
    if language == "bash":
        raise typer.Exit(run_script(file.read_text(), timeout, template, sandbox))
    raise typer.Exit(run_cell(file.read_text(), language, timeout, template, sandbox))


def run_cell(
    code: str, language: str, timeout: float | None, template: str | None, sandbox_id: str | None
) -> int:
    """Run one REPL cell, stream its output, and return the exit status for the shell."""
    body = {"code": code, "language": language, "timeout": timeout}
    with OneShot() as client, _sandbox(client, timeout, template, sandbox_id) as target:
        execution = client.run_code(target, body, write_stdout, write_stderr)
    return _report(execution)


def run_script(script: str, timeout: float | None, template: str | None, sandbox_id: str | None) -> int:
    """Run a shell script as one command; its exit status becomes ours (1 if a signal ended it)."""
    body = {"cmd": script, "timeout": timeout}
    with OneShot() as client, _sandbox(client, timeout, template, sandbox_id) as target:
        result = client.run_command(target, body, write_stdout, write_stderr)
    if result.timed_out:
        print_failure("the script ran out of time (--timeout)")
    return 1 if result.exit_code is None or result.timed_out else result.exit_code


@contextmanager
def _sandbox(
    client: OneShot, timeout: float | None, template: str | None, sandbox_id: str | None
) -> Iterator[str]:
    """The named sandbox's id (left running afterwards), or a new one's (killed at the end,
    also when the run is cut short)."""
    if sandbox_id is not None:
        yield sandbox_id
        return
    spec: dict[str, object] = {"timeout": max(_DEFAULT_LIFETIME_S, (timeout or 0) + 60)}
    if template is not None:
        spec["template"] = template
    created = client.create(spec)
    try:
        yield created
    finally:
        client.kill(created)


def _report(execution: Execution) -> int:
    for result in execution.results:
        if result.text is not None:
            write_stdout(result.text + "\n")
        else:
            write_stderr(f"[result without text: {', '.join(result.data)}]\n")
    if execution.error is not None:
        error = execution.error
        if error.name == "SystemExit":
            return _exit_status(error.value)
        text = error.traceback or f"{error.name}: {error.value}"
        write_stderr(text if text.endswith("\n") else text + "\n")
        return 1
    if execution.timed_out:
        print_failure("the code ran out of time (--timeout)")
        return 1
    if execution.exit_code not in (None, 0):
        return 1
    return 0


def _exit_status(value: str) -> int:
    """``sys.exit(value)`` in the cell ends the command as it would end ``python -c``: no
    traceback; None is 0, an integer is the status, anything else is printed and is 1."""
    if value in ("", "None"):
        return 0
    try:
        return int(value) & 0xFF
    except ValueError:
        write_stderr(value + "\n")
        return 1
