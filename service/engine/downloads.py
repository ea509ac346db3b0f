"""Merged checkpoints for download (docs/formats.md, "Merged checkpoint"), cached on disk with an exact LRU byte bound.

The file name is a hash of (format, the kind's materialisation version, family id, the verified
manifest's sha256, the key of the variant serving the preference: models_store/kinds/base.py): the
preference text from the URL is parsed, never used as a path; a family removed and published again
with other bytes under the same id never meets its old files; preferences served by one variant (a
point-set member) share one file and one ETag. A file is built once per key (a per-key lock makes
concurrent requests wait for the first build), written atomically, and streamed from an open
file handle so eviction by another request cannot pull it from under a running download.

The bound counts the cached files plus the exact sizes of the builds in progress: a build
reserves its size first, evicting least recently used files, and waits for running builds when
only they stand in the way. A checkpoint larger than the whole bound is streamed as it is
materialised, without touching the disk. A full disk (ENOSPC, EDQUOT) evicts every cached file
that no download is reading and tries once more, then answers 507; no partial file is ever kept.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, BinaryIO, Callable, Iterator, Optional

from models_store.atomic import TMP_PREFIX
from models_store.preference import Preference

from service.errors import InsufficientStorage

log = logging.getLogger(__name__)

DOWNLOAD_FORMAT = "3"  # part of the cache key: a layout change never serves stale files (3: keyed by variant)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
SUFFIX = ".safetensors"
CHUNK = 1 << 20


def write_checkpoint(path: Path, family, pref: Preference, device) -> None:
    from models_store.merged import write_checkpoint as write  # torch: only where checkpoints are built
    write(path, family, pref, device)


def cache_key(family_id: str, digest: str, materialization: str, variant: str) -> str:
    """The cache file's name and the ETag: of the family's id and verified manifest, its kind's
    materialisation version (FamilyManifest.materialization: a file an earlier build made otherwise is
    never served), and the variant's key."""
    text = "\0".join(("pmerge-download", DOWNLOAD_FORMAT, materialization, family_id, digest, variant))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def download_key(family, pref: Preference) -> tuple[str, str]:
    """(the file's key, the variant's key) of a loaded family's `pref`: resolving may solve (host
    work, the caller's thread)."""
    from models_store.kinds.base import variant_key
    variant = variant_key(family.variant(pref))
    return cache_key(family.family_id, family.digest, family.manifest.materialization, variant), variant


def etag_matches(header: Optional[str], etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (or *)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@dataclass(frozen=True)
class NotModified:
    """The answer to a conditional download whose ETag the client holds."""
    etag: str
    variant: str


@dataclass
class CachedFile:
    """A checkpoint to send: an open cached file, or (`file` None) a stream built while it is sent."""
    size: int
    etag: str  # quoted, as sent in the ETag header
    filename: str
    built: bool  # False: a cache hit
    variant: str  # the key of the variant written
    file: Optional[BinaryIO] = None
    stream: Optional[Iterator[bytes | memoryview] | AsyncIterator[bytes]] = None  # sync, or async from an engine process
    on_close: Optional[Callable[[], None]] = None

    def chunks(self) -> Iterator[bytes | memoryview] | AsyncIterator[bytes]:
        if self.file is not None:
            return self._read(self.file)
        if self.stream is None:
            raise ValueError("a checkpoint with neither a file nor a stream")
        return self.stream

    @staticmethod
    def _read(file: BinaryIO) -> Iterator[bytes]:
        with file:
            while block := file.read(CHUNK):
                yield block

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.on_close is not None:
            self.on_close()


class DownloadCache:
    """One family's downloads; the checkpoints are merged on `device` (the service's)."""

    def __init__(self, root: Path, max_bytes: int, family, device="cpu"):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.family, self.device = family, device
        self.builds = 0
        self.hits = 0
        self._locks: dict[str, threading.Lock] = {}
        self._reserved = 0  # bytes of the builds in progress
        self._guard = threading.Condition()
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, pref: Preference) -> tuple[str, str]:
        return download_key(self.family, pref)

    def get(self, pref: Preference, if_none_match: Optional[str] = None) -> CachedFile | NotModified:
        """Open the checkpoint of `pref`, building it first if needed; NotModified when `if_none_match`
        names its ETag (the file is a pure function of its key: families are immutable). Blocking: run
        it in a thread."""
        from models_store.merged import checkpoint_chunks, checkpoint_size
        key, variant = self.key(pref)
        etag = f'"{key}"'
        if etag_matches(if_none_match, etag):
            return NotModified(etag, variant)
        path = self.root / f"{key}{SUFFIX}"
        name = f"{self.family.family_id}-{key[:12]}{SUFFIX}"
        with self._key_lock(key):
            try:
                f = open(path, "rb")
                os.utime(path)  # LRU: mtime is the last use
                built = False
            except FileNotFoundError:
                size = checkpoint_size(self.family, pref)
                if size > self.max_bytes:  # never fits: stream it as it is made
                    with self._guard:
                        self.builds += 1
                    return CachedFile(size=size, etag=etag, filename=name, built=True, variant=variant,
                                      stream=checkpoint_chunks(self.family, pref, self.device))
                self._reserve(size, key)
                try:
                    t0 = time.monotonic()
                    self._write(path, pref, key)
                    log.info("built checkpoint %s for %s in %.2fs", path.name, pref.canonical, time.monotonic() - t0)
                    f = open(path, "rb")
                finally:
                    with self._guard:
                        self._reserved -= size
                        self._guard.notify_all()
                built = True
            with self._guard:
                if built:
                    self.builds += 1
                else:
                    self.hits += 1
        size = os.fstat(f.fileno()).st_size
        return CachedFile(size=size, etag=etag, filename=name, built=built, variant=variant, file=f)

    def _write(self, path: Path, pref: Preference, key: str) -> None:
        """Write the checkpoint (atomically: a failed write leaves nothing); on a full disk, evict
        every other cached file no one is reading and try once more."""
        for attempt in (1, 2):
            try:
                return write_checkpoint(path, self.family, pref, self.device)
            except OSError as e:
                if e.errno not in DISK_FULL:
                    raise
                if attempt == 1:
                    with self._guard:
                        freed = sum(st.st_size for p, st in self.entries() if self._evict(p, key))
                    log.warning("download cache %s: disk full (%s); evicted %d bytes, trying again", self.root,
                                os.strerror(e.errno), freed)
                    continue
                raise InsufficientStorage(f"no room on the download cache's disk for the {pref.canonical} checkpoint "
                                          f"of family {self.family.family_id} ({os.strerror(e.errno)}, after evicting "
                                          f"every cached file not being read)") from None

    def _key_lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        out = []
        for p in self.root.iterdir():
            if p.name.endswith(SUFFIX) and not p.name.startswith(TMP_PREFIX):
                try:
                    out.append((p, p.stat()))
                except FileNotFoundError:  # evicted meanwhile
                    pass
        return sorted(out, key=lambda e: e[1].st_mtime)

    def _reserve(self, size: int, building: str) -> None:
        """Make room for `size` more bytes and hold them; waits while running builds fill the bound."""
        with self._guard:
            while True:
                entries = self.entries()
                total = sum(st.st_size for _, st in entries) + self._reserved
                for p, st in entries:
                    if total + size <= self.max_bytes:
                        break
                    if self._evict(p, building):
                        total -= st.st_size
                if total + size <= self.max_bytes:
                    self._reserved += size
                    return
                self._guard.wait(timeout=1.0)  # a build finishing (or a file being closed) frees room

    def _evict(self, path: Path, building: str) -> bool:
        """Remove one cached file unless it is being built or opened right now (guard held)."""
        key = path.name[: -len(SUFFIX)]
        lock = self._locks.get(key)
        if key == building or (lock is not None and not lock.acquire(blocking=False)):
            return False
        try:
            path.unlink(missing_ok=True)  # a running download keeps reading its open handle
            self._locks.pop(key, None)
        finally:
            if lock is not None:
                lock.release()
        log.info("evicted %s", path.name)
        return True
