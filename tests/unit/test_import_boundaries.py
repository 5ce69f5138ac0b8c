"""The SDK and the integrations are clients of the daemon: importing them loads nothing of the
engine's side (the engine, the VMM drivers and qemu.qmp, the host's network, the server)."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINE_SIDE = ("ember.engine", "ember.vmm", "ember.network", "ember.server", "ember.cluster", "qemu")


@pytest.mark.parametrize(
    "statement",
    [
        "import ember; ember.Sandbox; ember.AsyncSandbox",
        "from ember.client import Sandbox, AsyncSandbox, Keys, network_policy, build_template",
        "import ember.integrations.mcp.tools",
        "import ember.integrations.openai_agents",
        "import ember.cli; ember.cli.build_app('execute')",
    ],
)
def test_client_side_imports_load_nothing_of_the_engine_side(statement: str) -> None:
    probe = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    found = [m for m in loaded.stdout.split() if m.split(".")[0] == "qemu" or m.startswith(ENGINE_SIDE)]
    assert found == [], f"{statement!r} loaded {found}"


def test_execute_loads_neither_httpx_nor_rich() -> None:
    """``ember execute`` on a warm daemon is mostly Python's own start: httpx (with the CLI it
    loads beside click and rich) would cost it ~140 ms, rich's console ~35."""
    probe = "import sys, ember.cli; ember.cli.build_app('execute'); print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    found = [m for m in loaded.stdout.split() if m.split(".")[0] in ("httpx", "httpcore", "rich", "asyncio")]
    assert found == [], f"ember execute loaded {found}"
