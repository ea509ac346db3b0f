"""How the front-end processes of `pmerge serve` talk to its engine process (no torch, no pickle).

Messages on a Unix socket: an 8-byte prefix (the JSON header's length, the payload's length), a
JSON header, and an optional binary payload (logits, checkpoint bytes). A reply's header has
`ok`; a refusal carries the service error's status, code, detail and headers, and is raised again
in the front end as that error, so a client sees what it would see from one process.

Decoded images do not travel on the socket: a front end writes them into its own shared memory
`Arena` and sends where they are; the engine reads them there, in place.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import Any, Optional

from service.errors import ServiceError

PREFIX = struct.Struct("<II")
ALIGN = 64


async def send(writer: asyncio.StreamWriter, header: dict, payload: bytes | memoryview = b"") -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    writer.write(PREFIX.pack(len(raw), len(payload)) + raw)
    if payload:
        writer.write(payload)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> tuple[dict, bytes]:
    """The next message; asyncio.IncompleteReadError when the other side has gone."""
    size, nbytes = PREFIX.unpack(await reader.readexactly(PREFIX.size))
    header = json.loads(await reader.readexactly(size))
    return header, (await reader.readexactly(nbytes) if nbytes else b"")


def refusal(error: ServiceError) -> dict:
    return {"ok": False, "status": error.status, "error": error.error, "detail": error.detail, "headers": error.headers}


class RemoteError(ServiceError):
    """A service error the engine process raised, raised again in a front end."""

    def __init__(self, status: int, error: str, detail: Any, headers: Optional[dict[str, str]] = None):
        super().__init__(detail, headers)
        self.status, self.error = status, error


def raise_refusal(header: dict) -> None:
    if not header.get("ok"):
        raise RemoteError(int(header["status"]), str(header["error"]), header.get("detail"), header.get("headers"))


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Arena:
    """A front end's shared memory for the images it hands the engine: first-fit blocks, freed when
    the engine has answered (it copied them to the device by then)."""

    def __init__(self, size: int):
        self.shm = shared_memory.SharedMemory(create=True, size=max(ALIGN, aligned(size)))
        try:  # its pages now: a full /dev/shm is an error here, not a SIGBUS at a later write
            os.posix_fallocate(self.shm._fd, 0, self.shm.size)  # type: ignore[attr-defined]
        except OSError as e:
            self.close()
            raise OSError(e.errno, f"cannot reserve {self.shm.size} bytes of shared memory: {e.strerror}") from None
        self.size = self.shm.size
        self.free: list[tuple[int, int]] = [(0, self.size)]  # (offset, size), sorted, coalesced
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.shm.name

    def alloc(self, n: int) -> Optional[int]:
        """The offset of n free bytes, or None when they do not fit now."""
        n = aligned(max(1, n))
        with self._lock:
            for i, (offset, size) in enumerate(self.free):
                if size >= n:
                    self.free[i:i + 1] = [(offset + n, size - n)] if size > n else []
                    return offset
        return None

    def room(self, n: int) -> bool:
        with self._lock:
            return any(size >= aligned(n) for _, size in self.free)

    def release(self, offset: int, n: int) -> None:
        n = aligned(max(1, n))
        with self._lock:
            blocks = sorted([*self.free, (offset, n)])
            merged: list[tuple[int, int]] = []
            for start, size in blocks:
                if merged and merged[-1][0] + merged[-1][1] == start:
                    merged[-1] = (merged[-1][0], merged[-1][1] + size)
                else:
                    merged.append((start, size))
            self.free = merged

    def write(self, offset: int, data: bytes | memoryview) -> None:
        buf = self.shm.buf
        if buf is None:
            raise ValueError("the arena is closed")
        buf[offset:offset + len(data)] = data

    def close(self) -> None:
        self.shm.close()
        self.shm.unlink()


def attach(name: str) -> shared_memory.SharedMemory:
    """Another process's arena, mapped; never unlinked from here (the owner does it)."""
    shm = shared_memory.SharedMemory(name=name)
    try:  # Python < 3.13 registers an attached segment too, and would unlink it at exit
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        pass
    return shm
