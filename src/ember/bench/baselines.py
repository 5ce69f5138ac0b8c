"""The floors each Ember latency is compared with, measured on the same machine in the same run.

- an HTTP no-op round trip to the daemon (the floor for any API call);
- a persistent Python REPL over a pipe, no VM (the floor for run_code);
- ``subprocess.run(["true"])`` on the host (the floor for a command).
"""

from __future__ import annotations

import subprocess
import sys

import httpx

HTTP = "baseline: HTTP no-op to the daemon"
REPL = "baseline: local Python REPL over a pipe"
TRUE = "baseline: subprocess.run(['true']) on the host"

_REPL = """
import sys
namespace = {}
for line in sys.stdin:
    exec(compile(line, "<cell>", "single"), namespace)
    sys.stdout.write("\\x00\\n")
    sys.stdout.flush()
"""


class LocalRepl:
    """A Python interpreter that runs one line per request and answers with a marker line."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-u", "-c", _REPL], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, line: str) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        output = []
        while (text := self._process.stdout.readline()) != "\x00\n":
            output.append(text)
        return "".join(output)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()


def http_noop(client: httpx.Client) -> None:
    client.get("/health").raise_for_status()


def host_true() -> None:
    subprocess.run(["true"], check=True)
