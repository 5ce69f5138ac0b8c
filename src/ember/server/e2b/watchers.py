"""E2B's directory watches: the ``WatchDir`` stream and the polled watchers (create, get events, remove).

The sync SDK polls: ``CreateWatcher`` starts a watch whose events wait here, in
a bounded buffer, for ``GetWatcherEvents``; ``RemoveWatcher`` (or the sandbox
ending) stops it. The async SDK streams them with ``WatchDir``.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ember.engine.sandbox import Sandbox
from ember.protocol import messages as m
from ember.server.e2b import connect
from ember.server.e2b.connect import ConnectError, Emit, Message
from ember.server.e2b.filesystem import required_path
from ember.server.e2b.plane import sandbox_of

EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "write": "EVENT_TYPE_WRITE",
    "remove": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
    "chmod": "EVENT_TYPE_CHMOD",
}
MAX_BUFFERED_EVENTS = 10_000
MAX_WATCHERS = 256
_START_TIMEOUT_S = 30.0


def event(change: m.FileChange) -> Message:
    return {"name": change.name, "type": EVENT_TYPES[change.kind]}


@dataclass
class _Watcher:
    sandbox_id: str
    task: asyncio.Task[None]
    events: collections.deque[Message]


class Watchers:
    """The polled watchers of every sandbox, by id."""

    def __init__(self) -> None:
        self._watchers: dict[str, _Watcher] = {}

    async def create(self, box: Sandbox, path: str, recursive: bool) -> str:
        for watcher_id in [k for k, w in self._watchers.items() if w.task.done()]:
            del self._watchers[watcher_id]  # their sandbox ended or their directory went
        if len(self._watchers) >= MAX_WATCHERS:
            raise ConnectError("resource_exhausted", f"at most {MAX_WATCHERS} watchers at a time")
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        buffer: collections.deque[Message] = collections.deque(maxlen=MAX_BUFFERED_EVENTS)

        def on_start() -> None:
            if not started.done():
                started.set_result(None)

        async def run() -> None:
            try:
                await box.files.watch(
                    path, lambda c: buffer.append(event(c)), recursive=recursive, on_start=on_start
                )
            except Exception as exc:
                if not started.done():
                    started.set_exception(exc)

        task = asyncio.create_task(run(), name=f"e2b-watch-{box.id}")
        try:
            await asyncio.wait_for(asyncio.shield(started), _START_TIMEOUT_S)
        except BaseException:
            task.cancel()
            raise
        watcher_id = secrets.token_hex(8)
        self._watchers[watcher_id] = _Watcher(box.id, task, buffer)
        return watcher_id

    def _get(self, box: Sandbox, watcher_id: object) -> _Watcher:
        watcher = self._watchers.get(watcher_id) if isinstance(watcher_id, str) else None
        if watcher is None or watcher.sandbox_id != box.id:
            raise ConnectError("not_found", f"no watcher {watcher_id!r}")
        return watcher

    def take(self, box: Sandbox, watcher_id: object) -> list[Message]:
        watcher = self._get(box, watcher_id)
        events = list(watcher.events)
        watcher.events.clear()
        return events

    async def close(self) -> None:
        """End every watcher (the app's lifespan does, before the engine closes)."""
        tasks = [w.task for w in self._watchers.values()]
        self._watchers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def remove(self, box: Sandbox, watcher_id: object) -> None:
        watcher = self._get(box, watcher_id)
        del self._watchers[watcher_id]  # type: ignore[arg-type]
        watcher.task.cancel()
        # Its own end (cancelled, or failed) is no news; a cancellation of ours still is.
        await asyncio.gather(watcher.task, return_exceptions=True)


def _watchers(request: Request) -> Watchers:
    return request.app.state.watchers  # type: ignore[no-any-return]


async def watch_dir(request: Request) -> Response:
    box = sandbox_of(request)
    message = await connect.first_message(request)
    path = required_path(message)

    async def run(emit: Emit) -> None:
        await box.files.watch(
            path,
            lambda change: emit({"filesystem": event(change)}),
            recursive=bool(message.get("recursive")),
            on_start=lambda: emit({"start": {}}),
        )

    return connect.server_stream(run, request, keepalive={"keepalive": {}})


async def create_watcher(request: Request) -> Response:
    async def handle(message: Message) -> Message:
        box = sandbox_of(request)
        recursive = bool(message.get("recursive"))
        return {"watcherId": await _watchers(request).create(box, required_path(message), recursive)}

    return await connect.unary(request, handle)


async def get_watcher_events(request: Request) -> Response:
    async def handle(message: Message) -> Message:
        return {"events": _watchers(request).take(sandbox_of(request), message.get("watcherId"))}

    return await connect.unary(request, handle)


async def remove_watcher(request: Request) -> Response:
    async def handle(message: Message) -> Message:
        await _watchers(request).remove(sandbox_of(request), message.get("watcherId"))
        return {}

    return await connect.unary(request, handle)


_PREFIX = "/filesystem.Filesystem/"
routes = [
    Route(_PREFIX + "WatchDir", connect.streaming(watch_dir), methods=["POST"]),
    Route(_PREFIX + "CreateWatcher", create_watcher, methods=["POST"]),
    Route(_PREFIX + "GetWatcherEvents", get_watcher_events, methods=["POST"]),
    Route(_PREFIX + "RemoveWatcher", remove_watcher, methods=["POST"]),
]
