"""The engine process of `pmerge serve`: its families and engines (a LocalRuntime), answering the
front-end processes on a Unix socket (service/runtime/ipc.py says how, service/runtime/messages.py what). Each
connection carries one request at a time; a front end keeps a few open.
"""
from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import replace
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Awaitable, Callable, Iterator, Optional, cast

import numpy as np

from models_store.preference import parse_preference

from service.runtime import ipc
from service.runtime import messages as m
from service.engine.downloads import NotModified
from service.errors import BadRequest, NotReady, ServiceError
from service.engine.images import Decoded
from service.engine.families import FamilyView
from service.runtime.local import LocalRuntime

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20


class EngineServer:
    def __init__(self, runtime: LocalRuntime, path: str):
        self.runtime, self.path = runtime, path
        self.arenas: dict[str, SharedMemory] = {}  # name -> the front's arena, attached once
        self.users: dict[str, int] = {}  # name -> connections that sent images from it
        self.server: Optional[asyncio.AbstractServer] = None
        self.connections: dict[asyncio.Task, asyncio.StreamWriter] = {}  # handler -> its connection
        self.handlers: dict[m.Op, Callable[[Any, asyncio.StreamWriter], Awaitable[None]]] = {
            m.Op.HOLD: self.hold, m.Op.CLASSIFY: self.classify, m.Op.CHECKPOINT: self.checkpoint,
            m.Op.FAMILIES: self.families, m.Op.READINESS: self.readiness}

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self.handle, self.path, limit=1 << 26)

    async def close(self) -> None:
        """Stop listening, then end every connection's handler here: a handler left to the loop's
        shutdown would be cancelled, and asyncio logs each such cancellation as an error."""
        if self.server is not None:
            self.server.close()
        for writer in self.connections.values():
            writer.close()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=5)
        for name in list(self.arenas):
            self._detach(name)

    def _detach(self, name: str) -> None:
        """Unmap a front end's arena once no connection uses it (a front that exited or was restarted)."""
        self.users.pop(name, None)
        shm = self.arenas.pop(name, None)
        if shm is None:
            return
        gc.collect()  # views of a request that failed may sit in a traceback's frames
        try:
            shm.close()
        except BufferError:  # an image of it is still in a batch: the mapping goes when its last view does
            log.debug("engine: arena %s still has views; left mapped", name)
            shm._mmap = None  # type: ignore[attr-defined]  # its views keep it; close() now closes the descriptor
            shm.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        used: set[str] = set()
        task = asyncio.current_task()
        if task is not None:
            self.connections[task] = writer
        try:
            while True:
                try:
                    header, _ = await ipc.receive(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    request = m.request_from_wire(header)
                    if isinstance(request, m.Classify) and request.arena not in used:
                        used.add(request.arena)
                        self.users[request.arena] = self.users.get(request.arena, 0) + 1
                    await self.handlers[request.op](request, writer)
                except m.BadMessage as e:
                    await ipc.send(writer, ipc.refusal(BadRequest(f"engine: {e}")))
                except ServiceError as e:
                    await ipc.send(writer, ipc.refusal(e))
                except Exception as e:  # noqa: BLE001  (a bug answers this request, never the connection)
                    log.exception("engine: %s failed", header.get("op"))
                    await ipc.send(writer, ipc.refusal(ServiceError(f"{type(e).__name__}: {e}")))
        finally:
            self.connections.pop(task, None)  # type: ignore[arg-type]
            writer.close()
            for name in used:
                if name in self.users:  # else detached already (close())
                    self.users[name] -= 1
                    if not self.users[name]:
                        self._detach(name)

    def _view(self, digest: str, view: FamilyView) -> FamilyView:
        if digest != view.digest:
            raise NotReady(f"family {view.family_id!r} was replaced in the store meanwhile; retry", retry_after=1)
        return view

    async def hold(self, request: m.Hold, writer: asyncio.StreamWriter) -> None:
        async with self.runtime.hold(request.family) as view:
            await ipc.send(writer, m.HoldReply(view.manifest.model_dump(mode="json"), view.digest, view.device_jpeg,
                                               [f.model_dump() for f in view.files], view.cache_bytes).to_wire())

    async def classify(self, request: m.Classify, writer: asyncio.StreamWriter) -> None:
        shm = self.arenas.get(request.arena)
        if shm is None:
            shm = self.arenas[request.arena] = ipc.attach(request.arena)
        buf = shm.buf
        if buf is None:  # unmapped: its front end went away meanwhile
            raise NotReady("the front end's shared memory is gone; retry", retry_after=1)
        images = []
        for item in request.images:
            view = buf[item["at"]:item["at"] + item["n"]]
            if item["kind"] == "pixels":
                images.append(Decoded(pixels=np.frombuffer(view, dtype=np.uint8).reshape(item["shape"]),
                                      name=item["name"]))
            else:
                images.append(Decoded(jpeg=view, name=item["name"]))
        async with self.runtime.hold(request.family) as family:
            logits = await self.runtime.run(self._view(request.digest, family), images, np.asarray(request.prefs),
                                            background=request.background)
        tasks = list(logits)
        matrix = np.ascontiguousarray(np.concatenate([logits[t] for t in tasks], axis=1), dtype=np.float32)
        await ipc.send(writer, m.ClassifyReply(tasks, [logits[t].shape[1] for t in tasks]).to_wire(),
                       matrix.data.cast("B"))

    async def checkpoint(self, request: m.Checkpoint, writer: asyncio.StreamWriter) -> None:
        async with self.runtime.hold(request.family) as family:
            family = self._view(request.digest, family)
            cached = await self.runtime.checkpoint(family, parse_preference(request.pref, family.tasks),
                                                   request.if_none_match)
        if isinstance(cached, NotModified):
            await ipc.send(writer, m.CheckpointReply(cached.etag, cached.variant, not_modified=True).to_wire())
            return
        reply = m.CheckpointReply(cached.etag, cached.variant, size=cached.size, filename=cached.filename,
                                  built=cached.built)
        if cached.file is not None:  # the front end reads the file; its name is the cache's own
            path = cached.file.name
            cached.close()
            await ipc.send(writer, replace(reply, path=path).to_wire())
            return
        await ipc.send(writer, replace(reply, stream=True).to_wire())  # larger than the cache: made as it is sent
        chunks = cast(Iterator[bytes | memoryview], cached.chunks())  # this process's downloads are made here, in threads
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:  # merging is blocking work
            await ipc.send(writer, m.Chunk().to_wire(), chunk)
        await ipc.send(writer, m.Chunk(end=True).to_wire())

    async def families(self, request: m.Families, writer: asyncio.StreamWriter) -> None:
        await ipc.send(writer, m.FamiliesReply(await self.runtime.list_families()).to_wire())

    async def readiness(self, request: m.Readiness, writer: asyncio.StreamWriter) -> None:
        ready = await self.runtime.readiness()
        await ipc.send(writer, m.ReadinessReply(ready.ready, ready.family_id, ready.detail).to_wire())
