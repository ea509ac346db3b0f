"""`RemoteRuntime`: the runtime of a front-end process of `pmerge serve`. It parses, checks and
decodes here, writes the decoded images into its shared memory arena, and asks the engine process
(service/runtime/engine_server.py) for the rest; it imports no torch, so a front end costs tens of MB.

A family's manifest is parsed once per digest. What the engine said of a family is reused for
HOLD_S (one round trip per request, the classification, is what a request costs on the socket):
the engine checks again on every classification, by digest, so a family removed or replaced is
still refused there. A request's queue places are taken in the engine when its images arrive; a
front refuses undecoded while its shared memory is full, or for the Retry-After of the engine's
last "overloaded" for that family. Connections to the engine are pooled, one request at a time on each.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional, Sequence, TypeVar

import numpy as np

from models_store.family import FamilyManifest, FileCost
from models_store.preference import Preference

from service.runtime import ipc
from service.runtime import messages as m
from service.engine.downloads import CachedFile, NotModified
from service.errors import NotReady, Overloaded
from service.metrics import Metrics
from service.engine.families import FamilyView
from service.runtime.base import Logits, Readiness, Runtime
from service.settings import Settings

MAX_CONNECTIONS = 64  # to the engine, per front end
HOLD_S = 1.0
R = TypeVar("R", bound=m.Reply)


class EngineLink:
    """A pool of connections to the engine process."""

    def __init__(self, path: str):
        self.path = path
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        async with self.slots:
            if self.idle:
                conn = self.idle.pop()
            else:
                try:
                    conn = await asyncio.open_unix_connection(self.path, limit=1 << 26)
                except OSError as e:
                    raise NotReady(f"the engine process does not answer ({e.strerror or e})", retry_after=2) from None
            try:
                yield conn
            except BaseException:
                conn[1].close()  # its state is unknown now: never reused
                raise
            self.idle.append(conn)

    async def call(self, request: m.Request, answer: type[R]) -> tuple[R, bytes]:
        """The engine's answer to `request` (and its payload); its refusal raised as the service error."""
        async with self.connection() as (reader, writer):
            try:
                await ipc.send(writer, request.to_wire())
                reply, payload = await ipc.receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                raise NotReady(f"the engine process went away ({type(e).__name__})", retry_after=2) from None
        ipc.raise_refusal(reply)
        return answer.from_wire(reply), payload

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class RemoteRuntime(Runtime):
    def __init__(self, settings: Settings, metrics: Metrics, engine: str, arena_bytes: int):
        super().__init__(settings, metrics)
        self.link = EngineLink(engine)
        self.arena = ipc.Arena(arena_bytes)
        self._manifests: dict[str, FamilyManifest] = {}  # digest -> parsed manifest
        self._held: dict[Optional[str], tuple[float, FamilyView]] = {}  # family id -> (until, view)
        self._overloaded: dict[str, tuple[float, Overloaded]] = {}  # family id -> (until, the engine's refusal)

    async def start(self) -> None:
        return None  # the engine process loads the families

    def close(self) -> None:
        self.link.close()
        self.arena.close()
        super().close()

    async def readiness(self) -> Readiness:
        try:
            reply, _ = await self.link.call(m.Readiness(), m.ReadinessReply)
        except NotReady as e:
            return Readiness(False, None, e.detail)
        return Readiness(reply.ready, reply.family_id, reply.detail)

    @asynccontextmanager
    async def hold(self, family_id: Optional[str]) -> AsyncIterator[FamilyView]:
        until, view = self._held.get(family_id, (0.0, None))
        if view is None or time.monotonic() > until:
            reply, _ = await self.link.call(m.Hold(family_id), m.HoldReply)
            manifest = self._manifests.get(reply.digest)
            if manifest is None:
                manifest = self._manifests[reply.digest] = FamilyManifest.model_validate(reply.manifest)
            view = FamilyView(manifest, reply.digest, reply.device_jpeg,
                              tuple(FileCost.model_validate(f) for f in reply.files), reply.cache_bytes)
            self._held[family_id] = (time.monotonic() + HOLD_S, view)
        yield view

    def _image_bytes(self, family: FamilyView) -> int:
        pre = family.manifest.preprocess
        return pre.channels * pre.image_size ** 2

    async def admit(self, family: FamilyView, n: int) -> None:
        until, refusal = self._overloaded.get(family.family_id, (0.0, None))
        if refusal is not None and time.monotonic() < until:
            raise refusal
        if not self.arena.room(n * self._image_bytes(family)):
            raise Overloaded("this front end's shared memory is full of images in flight; retry later", retry_after=1)

    async def classify(self, family: FamilyView, files: Sequence[tuple[str, bytes]], prefs: np.ndarray) -> Logits:
        async with self.prepared(family, files) as described:
            return await self.run(family, described, prefs)

    @asynccontextmanager
    async def prepared(self, family: FamilyView, files: Sequence[tuple[str, bytes]]
                       ) -> AsyncIterator[list[m.ImagePlace]]:
        """The files decoded into this front's shared memory once: the places the engine reads them at."""
        await self.admit(family, len(files))
        images = await self.decode(family, files)
        sizes = [ipc.aligned(d.nbytes) for d in images]
        start = self.arena.alloc(sum(sizes))
        if start is None:
            raise Overloaded("this front end's shared memory is full of images in flight; retry later", retry_after=1)
        try:
            described: list[m.ImagePlace] = []
            at = start
            for d, size in zip(images, sizes):
                if d.pixels is not None:
                    self.arena.write(at, d.pixels.data.cast("B"))
                    described.append(m.ImagePlace(kind="pixels", at=at, n=d.nbytes, name=d.name,
                                                  shape=list(d.pixels.shape)))
                elif d.jpeg is not None:
                    self.arena.write(at, d.jpeg)
                    described.append(m.ImagePlace(kind="jpeg", at=at, n=d.nbytes, name=d.name))
                at += size
            yield described
        finally:
            self.arena.release(start, sum(sizes))

    async def run(self, family: FamilyView, images: list[m.ImagePlace], prefs: np.ndarray,
                  background: bool = False) -> Logits:
        rows = np.asarray(prefs, dtype=np.float32).tolist()  # one [K] for every image travels once
        request = m.Classify(family.family_id, family.digest, self.arena.name, images, rows, background)
        try:
            reply, payload = await self.link.call(request, m.ClassifyReply)
        except ipc.RemoteError as e:
            if e.status == 503 and e.error == "overloaded":
                refusal = Overloaded(e.detail, retry_after=int(e.headers.get("Retry-After", "1")))
                self._overloaded[family.family_id] = (time.monotonic() + refusal.retry_after, refusal)
            if e.status in (404, 503):
                self._held.clear()  # ask the engine again: removed, replaced, unloaded
            raise
        matrix = np.frombuffer(payload, dtype=np.float32).reshape(len(images), -1)
        bounds = np.cumsum([0, *reply.sizes])
        return {t: matrix[:, a:b] for t, a, b in zip(reply.tasks, bounds[:-1], bounds[1:])}

    async def checkpoint(self, family: FamilyView, pref: Preference, if_none_match: Optional[str] = None
                         ) -> CachedFile | NotModified:
        request = m.Checkpoint(family.family_id, family.digest, pref.canonical, if_none_match)
        for attempt in (1, 2):  # the file can be evicted between the engine's answer and our open: ask again
            # a connection of its own: a stream holds it until the last byte is sent
            try:
                reader, writer = await asyncio.open_unix_connection(self.link.path, limit=1 << 26)
            except OSError as e:
                raise NotReady(f"the engine process does not answer ({e.strerror or e})", retry_after=2) from None
            try:
                await ipc.send(writer, request.to_wire())
                header, _ = await ipc.receive(reader)
                ipc.raise_refusal(header)
            except BaseException:
                writer.close()
                raise
            reply = m.CheckpointReply.from_wire(header)
            if reply.not_modified:
                writer.close()
                return NotModified(reply.etag, reply.variant)
            meta = (reply.size, reply.etag, reply.filename, reply.built, reply.variant)
            if reply.stream or reply.path is None:
                return CachedFile(*meta, stream=self._stream(reader, writer), on_close=writer.close)
            writer.close()
            try:
                return CachedFile(*meta, file=open(reply.path, "rb"))
            except FileNotFoundError:
                if attempt == 2:
                    raise NotReady("the checkpoint was evicted as it was sent; retry", retry_after=1) from None
        raise AssertionError("unreachable")

    @staticmethod
    async def _stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                header, payload = await ipc.receive(reader)
                ipc.raise_refusal(header)
                if m.Chunk.from_wire(header).end:
                    return
                yield payload
        finally:
            writer.close()

    async def list_families(self) -> list[dict]:
        reply, _ = await self.link.call(m.Families(), m.FamiliesReply)
        return reply.families


def arena_bytes(settings: Settings, front_ends: int) -> int:
    return max(1 << 20, settings.topology.shared_memory_bytes // max(1, front_ends))

