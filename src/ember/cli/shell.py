"""``ember shell``: an interactive terminal in a sandbox, inside the user's own terminal.

The local terminal goes into raw mode, so every key (Ctrl-C included) reaches the
sandbox's shell; window resizes follow through SIGWINCH. The local terminal is
restored on every way out, and the command exits with the shell's exit code.
It runs on the async SDK: one event loop watches stdin, the signal and the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Annotated

import typer

from ember.cli._output import stderr
from ember.client import AsyncSandbox, AsyncTerminal
from ember.errors import ProcessNotFoundError
from ember.tasks import cancel_and_wait


def shell(
    sandbox_id: Annotated[
        str | None,
        typer.Argument(metavar="[ID]", help="Sandbox to open a shell in; none: a new one, killed on exit."),
    ] = None,
) -> None:
    """Open an interactive shell in a sandbox."""
    raise typer.Exit(asyncio.run(_shell(sandbox_id)))


async def _shell(sandbox_id: str | None) -> int:
    if sandbox_id is None:
        sandbox = await AsyncSandbox.create()
        stderr.print(f"[dim]sandbox {sandbox.id} (killed when this shell ends)[/]")
    else:
        sandbox = await AsyncSandbox.connect(sandbox_id)
    async with sandbox:
        size = shutil.get_terminal_size()
        terminal = await sandbox.pty.create(cols=size.columns, rows=size.lines, on_data=_write_out)
        return await _attach(terminal)


async def _attach(terminal: AsyncTerminal) -> int:
    """Forward keys and resizes to `terminal` until its process exits; returns its exit code."""
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[bytes | os.terminal_size] = asyncio.Queue()
    stdin_fd = sys.stdin.fileno()

    def on_stdin() -> None:
        data = os.read(stdin_fd, 65536)
        if not data:  # stdin closed (a pipe ran dry): stop reading, let the shell go on
            loop.remove_reader(stdin_fd)
            return
        outbox.put_nowait(data)

    async def forward() -> None:
        while True:
            item = await outbox.get()
            try:
                if isinstance(item, bytes):
                    await terminal.send(item)
                else:
                    await terminal.resize(item.columns, item.lines)
            except ProcessNotFoundError:
                return  # the shell exited while keys were on their way; wait() has its exit code

    with _raw_mode(stdin_fd):
        loop.add_reader(stdin_fd, on_stdin)
        loop.add_signal_handler(signal.SIGWINCH, lambda: outbox.put_nowait(shutil.get_terminal_size()))
        forwarder = loop.create_task(forward())
        try:
            return await terminal.wait()
        finally:
            # Stop the inputs first, then the task that forwards them, then the connection.
            loop.remove_reader(stdin_fd)
            loop.remove_signal_handler(signal.SIGWINCH)
            await cancel_and_wait(forwarder)
            await terminal.close()


def _write_out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@contextlib.contextmanager
def _raw_mode(fd: int) -> Iterator[None]:
    """Raw mode on a terminal, restored afterwards; nothing to do when stdin is not a terminal."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
