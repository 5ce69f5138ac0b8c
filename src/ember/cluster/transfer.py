"""Copying a snapshot from the host that holds it to the host that will restore it.

The holder serves a manifest (the portable record, and each file's size, mode
and SHA-256) and then each file as a stream of its data extents (a 16-byte header,
offset and length, then the bytes; holes are not sent, so a 512 MiB memory file
with 80 MiB written costs 80 MiB). The SHA-256 covers exactly that stream and is
computed by the holder before it sends, from the immutable files; the receiver
hashes what it writes and refuses the copy on any difference. Layers it already
has (layer files never change once frozen, and are named uniquely) are not sent.

Files arrive in a staging directory and join the engine only whole and checked
(``ember.engine.transfer.adopt``); a copy cut short leaves only staged files,
removed at once (and at the next start). Requests between hosts carry the
cluster's token, which only members can read from etcd.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ember import errors
from ember.cluster.records import HostRecord
from ember.engine import SandboxManager
from ember.engine.store import SnapshotRecord
from ember.engine.transfer import adopt, files_of, local_images, portable, staging_dir
from ember.sparse import data_ranges
from ember.tasks import cancel_and_wait

log = logging.getLogger("ember.cluster")

_HEADER = struct.Struct(">QQ")
_CHUNK = 1 << 20


def extents(path: Path) -> Iterator[bytes]:
    """The file as the transfer sends it: each data extent's header, then its bytes, a MiB at a time."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, end in data_ranges(fd):
            yield _HEADER.pack(start, end - start)
            for offset in range(start, end, _CHUNK):
                yield os.pread(fd, min(_CHUNK, end - offset), offset)
    finally:
        os.close(fd)


def digest(path: Path) -> str:
    hashed = hashlib.sha256()
    for piece in extents(path):
        hashed.update(piece)
    return hashed.hexdigest()


class Receiver:
    """Writes one file from its extent stream, hashing it (fed piece by piece as they arrive)."""

    def __init__(self, path: Path, size_bytes: int, mode: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        os.ftruncate(self._fd, size_bytes)
        self._size = size_bytes
        self._hash = hashlib.sha256()
        self._pending = b""
        self._offset = 0
        self._left = 0  # bytes of the current extent still to come

    def feed(self, data: bytes) -> None:
        self._hash.update(data)
        view = self._pending + data
        while view:
            if self._left == 0:
                if len(view) < _HEADER.size:
                    break
                self._offset, self._left = _HEADER.unpack(view[: _HEADER.size])
                view = view[_HEADER.size :]
                if self._offset + self._left > self._size:
                    raise errors.IOError("a snapshot copy sent data beyond its file's end")
                continue
            piece = view[: self._left]
            os.pwrite(self._fd, piece, self._offset)
            self._offset += len(piece)
            self._left -= len(piece)
            view = view[len(piece) :]
        self._pending = bytes(view)

    def finish(self, expected: str, what: str) -> None:
        os.close(self._fd)
        if self._left or self._pending:
            raise errors.IOError(f"the copy of {what} ended in the middle of an extent")
        if not hmac.compare_digest(self._hash.hexdigest(), expected):
            raise errors.IOError(f"the copy of {what} does not match its SHA-256: refused")

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


# ---------------------------------------------------------------- the holder's side


class Exports:
    """Serves this host's snapshots to other hosts (manifests cached: the files never change)."""

    def __init__(self, manager: SandboxManager, token: str) -> None:
        self._manager = manager
        self.token = token
        self._manifests: dict[str, dict[str, Any]] = {}

    def check(self, request: Request) -> None:
        given = request.headers.get("authorization", "")[7:]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise errors.AuthenticationError("this endpoint is for the cluster's hosts (their token)")

    def _snapshot(self, snapshot_id: str) -> SnapshotRecord:
        snapshot = self._manager.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.state != "ready":
            raise errors.SnapshotNotFoundError(f"this host holds no snapshot {snapshot_id!r}")
        return snapshot

    async def manifest(self, snapshot_id: str) -> dict[str, Any]:
        snapshot = self._snapshot(snapshot_id)
        if snapshot_id not in self._manifests:
            files = files_of(snapshot)
            digests = await asyncio.gather(*(asyncio.to_thread(digest, f.path) for f in files))
            self._manifests[snapshot_id] = {
                "snapshot": portable(snapshot, self._manager.settings),
                "files": [
                    {"name": f.name, "size_bytes": f.path.stat().st_size, "mode": f.mode, "sha256": d}
                    for f, d in zip(files, digests, strict=True)
                ],
            }
        return self._manifests[snapshot_id]

    def file(self, snapshot_id: str, name: str) -> Path:
        for item in files_of(self._snapshot(snapshot_id)):
            if item.name == name:
                return item.path
        raise errors.PathNotFoundError(f"snapshot {snapshot_id} has no file {name!r}")


def export_routes(exports: Exports) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/v1/cluster/snapshots/{snapshot_id}")
    async def manifest(snapshot_id: str, request: Request) -> dict[str, Any]:
        exports.check(request)
        return await exports.manifest(snapshot_id)

    @router.get("/v1/cluster/snapshots/{snapshot_id}/files/{name:path}")
    def file(snapshot_id: str, name: str, request: Request) -> StreamingResponse:
        exports.check(request)
        return StreamingResponse(
            extents(exports.file(snapshot_id, name)), media_type="application/octet-stream"
        )

    return router


# ---------------------------------------------------------------- the receiver's side


class Imports:
    """Fetches snapshots into this host, one copy of each at a time."""

    def __init__(self, manager: SandboxManager, client: httpx.AsyncClient, token: str) -> None:
        self._manager = manager
        self._client = client
        self.token = token
        self._running: dict[str, asyncio.Task[SnapshotRecord]] = {}
        shutil.rmtree(staging_dir(manager.settings), ignore_errors=True)

    async def fetch(self, snapshot_id: str, holder: HostRecord) -> SnapshotRecord:
        """Copy ``snapshot_id`` from ``holder`` (joining a copy already under way)."""
        task = self._running.get(snapshot_id)
        if task is None:
            task = asyncio.create_task(self._fetch(snapshot_id, holder), name=f"fetch-{snapshot_id}")
            self._running[snapshot_id] = task
            task.add_done_callback(lambda _: self._running.pop(snapshot_id, None))
        return await asyncio.shield(task)

    async def close(self) -> None:
        await cancel_and_wait(*self._running.values())

    async def _fetch(self, snapshot_id: str, holder: HostRecord) -> SnapshotRecord:
        started = time.monotonic()
        headers = {"authorization": f"Bearer {self.token}"}
        base = f"{holder.address}/v1/cluster/snapshots/{snapshot_id}"
        try:
            answer = await self._client.get(base, headers=headers, timeout=120.0)
        except httpx.TransportError as exc:
            raise errors.HostUnavailableError(
                f"host {holder.name} did not send snapshot {snapshot_id}: {exc}"
            ) from exc
        if answer.is_error:
            raise errors.HostUnavailableError(
                f"host {holder.name} would not send snapshot {snapshot_id}: {answer.text[:300]}"
            )
        manifest = answer.json()
        local_images(manifest["snapshot"], self._manager.settings)  # before any byte is copied
        staged = staging_dir(self._manager.settings) / f"{snapshot_id}-{secrets.token_hex(4)}"
        layers = self._manager.layers.directory
        copied = 0
        try:
            for directory in ("snapshot", "layer"):
                (staged / directory).mkdir(parents=True)
            for item in manifest["files"]:
                kind, _, file_name = item["name"].partition("/")
                if kind == "layer" and (layers / file_name).exists():
                    continue  # a frozen layer this host has already (from an earlier copy)
                copied += await self._receive(f"{base}/files/{item['name']}", staged / kind / file_name, item)
            record = await adopt(self._manager.snapshots, manifest["snapshot"], staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        log.info(
            "copied snapshot %s from %s: %.1f MB of data in %.2f s, checksums match",
            snapshot_id, holder.name, copied / 1e6, time.monotonic() - started,
        )  # fmt: skip
        return record

    async def _receive(self, url: str, path: Path, item: dict[str, Any]) -> int:
        receiver = Receiver(path, int(item["size_bytes"]), int(item["mode"]))
        received = 0
        try:
            headers = {"authorization": f"Bearer {self.token}"}
            async with self._client.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(30.0)
            ) as answer:
                if answer.is_error:
                    raise errors.HostUnavailableError(f"{url} answered HTTP {answer.status_code}")
                async for chunk in answer.aiter_bytes():
                    receiver.feed(chunk)
                    received += len(chunk)
        except httpx.TransportError as exc:
            receiver.abort()
            raise errors.HostUnavailableError(f"the copy of {item['name']} broke off: {exc}") from exc
        except BaseException:
            receiver.abort()
            raise
        receiver.finish(item["sha256"], item["name"])
        return received
