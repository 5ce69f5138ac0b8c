"""``ember execute`` and ``ember run``: run code in a sandbox, output streamed to this terminal.

``execute`` runs a cell in the sandbox's persistent REPL (python or bash): the exit
status is 0 when it ran without error, 1 when it raised, timed out or (bash) failed,
and ``sys.exit(n)``'s n as ``python -c`` would give it; a Python traceback goes to
stderr. ``run FILE.py`` does the same with a file; ``run FILE.sh`` runs the script as
a command (``bash -c``, so ``exit`` ends the script, not a shared shell) and exits
with the script's own status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ember.cli._output import stderr, write_stderr, write_stdout
from ember.client import Execution, Sandbox

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
        stderr.print(f"[red]error: cannot tell the language of {file.name}: use a .py or .sh file[/]")
        raise typer.Exit(1)
    if language == "bash":
        raise typer.Exit(run_script(file.read_text(), timeout, template, sandbox))
    raise typer.Exit(run_cell(file.read_text(), language, timeout, template, sandbox))


def run_cell(
    code: str, language: str, timeout: float | None, template: str | None, sandbox_id: str | None
) -> int:
    """Run one REPL cell, stream its output, and return the exit status for the shell."""
    with _sandbox(timeout, template, sandbox_id) as sandbox:
        execution = sandbox.run_code(
            code, language=language, timeout=timeout, on_stdout=write_stdout, on_stderr=write_stderr
        )
    return _report(execution)


def run_script(script: str, timeout: float | None, template: str | None, sandbox_id: str | None) -> int:
    """Run a shell script as one command; its exit status becomes ours (1 if a signal ended it)."""
    with _sandbox(timeout, template, sandbox_id) as sandbox:
        result = sandbox.commands.run(script, timeout=timeout, on_stdout=write_stdout, on_stderr=write_stderr)
    if result.timed_out:
        stderr.print("[red]error: the script ran out of time (--timeout)[/]")
    return 1 if result.exit_code is None or result.timed_out else result.exit_code


def _sandbox(timeout: float | None, template: str | None, sandbox_id: str | None) -> Sandbox:
    """The named sandbox (left running afterwards), or a new one (killed when closed)."""
    if sandbox_id is not None:
        return Sandbox.connect(sandbox_id)
    return Sandbox(template=template, timeout=max(_DEFAULT_LIFETIME_S, (timeout or 0) + 60))


def _report(execution: Execution) -> int:
    for result in execution.results:
        if result.text is not None:
            write_stdout(result.text + "\n")
        else:
            stderr.print(f"\\[result without text: {', '.join(result.data)}]")
    if execution.error is not None:
        error = execution.error
        if error.name == "SystemExit":
            return _exit_status(error.value)
        text = error.traceback or f"{error.name}: {error.value}"
        write_stderr(text if text.endswith("\n") else text + "\n")
        return 1
    if execution.timed_out:
        stderr.print("[red]error: the code ran out of time (--timeout)[/]")
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
