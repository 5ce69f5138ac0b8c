"""The sync SDK is generated from the async one: the checked-in copy must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "unasync.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_sdk_matches_its_async_source() -> None:
    stale = _generator().stale_files()
    assert not stale, f"run `python scripts/unasync.py`; stale: {[str(path) for path in stale]}"


def test_async_names_become_their_sync_twins() -> None:
    source = (
        "import websockets.asyncio.client as ws_client\n"
        "from ember.client._async.transport import AsyncTransport\n"
        "CREATES_IN_INIT = False\n"
        "async def f(self) -> AsyncIterator[bytes]:\n"
        "    async with httpx.AsyncClient() as client:\n"
        "        async for chunk in response.aiter_bytes():\n"
        "            await aemit(callback, chunk)\n"
        "    await self._client.aclose()\n"
    )
    assert _generator().unasync_source(source) == (
        "import websockets.sync.client as ws_client\n"
        "from ember.client._sync.transport import Transport\n"
        "CREATES_IN_INIT = True\n"
        "def f(self) -> Iterator[bytes]:\n"
        "    with httpx.Client() as client:\n"
        "        for chunk in response.iter_bytes():\n"
        "            emit(callback, chunk)\n"
        "    self._client.close()\n"
    )
