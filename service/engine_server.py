"""The engine process of `pmerge serve`: its families and engines (a LocalRuntime), answering the
front-end processes on a Unix socket (service/ipc.py says how). Each connection carries one request
at a time; a front end keeps a few open.

    hold {family}                          -> the family's manifest, digest, where JPEGs decode
    classify {family, digest, arena, images, prefs, background}
                                           -> logits [N, sum of classes] float32, tasks, sizes
    checkpoint {family, digest, pref}      -> the cached file's path, or its bytes streamed
    families {} / readiness {}             -> as the routes say them
"""
from __future__ import annotations

import asyncio
import gc
import logging
from typing import Optional

import numpy as np

from models_store.preference import parse_preference

from . import ipc
from .errors import NotReady, ServiceError
from .images import Decoded
from .runtime import FamilyView, LocalRuntime

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20


class EngineServer:
    def __init__(self, runtime: LocalRuntime, path: str):
        self.runtime, self.path = runtime, path
        self.arenas: dict[str, object] = {}  # name -> SharedMemory, attached once
        self.users: dict[str, int] = {}  # name -> connections that sent images from it
        self.server: Optional[asyncio.AbstractServer] = None
        self.connections: dict[asyncio.Task, asyncio.StreamWriter] = {}  # handler -> its connection

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
                if header.get("arena") and header["arena"] not in used:
                    used.add(header["arena"])
                    self.users[header["arena"]] = self.users.get(header["arena"], 0) + 1
                try:
                    await getattr(self, "op_" + header["op"])(header, writer)
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

    def _view(self, header: dict, view: FamilyView) -> FamilyView:
        if header.get("digest") not in (None, view.digest):
            raise NotReady(f"family {view.family_id!r} was replaced in the store meanwhile; retry", retry_after=1)
        return view

    async def op_hold(self, header: dict, writer) -> None:
        async with self.runtime.hold(header.get("family")) as view:
            await ipc.send(writer, {"ok": True, "manifest": view.manifest.model_dump(mode="json"),
                                    "digest": view.digest, "device_jpeg": view.device_jpeg})

    async def op_classify(self, header: dict, writer) -> None:
        shm = self.arenas.get(header["arena"])
        if shm is None:
            shm = self.arenas[header["arena"]] = ipc.attach(header["arena"])
        images = []
        for item in header["images"]:
            view = shm.buf[item["at"]:item["at"] + item["n"]]
            if item["kind"] == "pixels":
                images.append(Decoded(pixels=np.frombuffer(view, dtype=np.uint8).reshape(item["shape"]),
                                      name=item["name"]))
            else:
                images.append(Decoded(jpeg=view, name=item["name"]))
        async with self.runtime.hold(header["family"]) as family:
            logits = await self.runtime.run(self._view(header, family), images, np.asarray(header["prefs"]),
                                            background=bool(header.get("background")))
        tasks = list(logits)
        matrix = np.ascontiguousarray(np.concatenate([logits[t] for t in tasks], axis=1), dtype=np.float32)
        await ipc.send(writer, {"ok": True, "tasks": tasks, "sizes": [logits[t].shape[1] for t in tasks]},
                       memoryview(matrix).cast("B"))

    async def op_checkpoint(self, header: dict, writer) -> None:
        async with self.runtime.hold(header["family"]) as family:
            family = self._view(header, family)
            cached = await self.runtime.checkpoint(family, parse_preference(header["pref"], family.tasks))
        meta = {"ok": True, "size": cached.size, "etag": cached.etag, "filename": cached.filename,
                "built": cached.built}
        if cached.file is not None:  # the front end reads the file; its name is the cache's own
            path = cached.file.name
            cached.close()
            await ipc.send(writer, meta | {"path": path})
            return
        await ipc.send(writer, meta | {"stream": True})  # larger than the cache: made as it is sent
        chunks = cached.chunks()
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:  # merging is blocking work
            await ipc.send(writer, {"ok": True}, chunk)
        await ipc.send(writer, {"ok": True, "end": True})

    async def op_families(self, header: dict, writer) -> None:
        await ipc.send(writer, {"ok": True, "families": await self.runtime.list_families()})

    async def op_readiness(self, header: dict, writer) -> None:
        ready = await self.runtime.readiness()
        await ipc.send(writer, {"ok": True, "ready": ready.ready, "family_id": ready.family_id, "detail": ready.detail})
