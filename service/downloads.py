"""Merged checkpoints for download (DESIGN 3.3), cached on disk with an LRU byte bound.

The file name is a hash of (format, family_id, canonical preference): the preference text from
the URL is parsed, never used as a path. A file is built once per key (a per-key lock makes
concurrent requests wait for the first build), written atomically, and streamed from an open
file handle so eviction by another request cannot pull it from under a running download.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from models_store.atomic import TMP_PREFIX, atomic_file
from models_store.family import Family
from models_store.preference import Preference

from .safetensors_stream import Spec, write_stream

log = logging.getLogger(__name__)

DOWNLOAD_FORMAT = "1"  # part of the cache key: a layout change never serves stale files
SUFFIX = ".safetensors"
CHUNK = 1 << 20


def cache_key(family_id: str, pref: Preference) -> str:
    text = "\0".join(("pmerge-download", DOWNLOAD_FORMAT, family_id, pref.canonical))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CachedFile:
    file: BinaryIO
    size: int
    etag: str  # quoted, as sent in the ETag header
    filename: str
    built: bool  # False: a cache hit

    def chunks(self) -> Iterator[bytes]:
        with self.file:
            while block := self.file.read(CHUNK):
                yield block


def checkpoint_specs(family: Family) -> list[Spec]:
    specs: list[Spec] = [(f"visual.{k}", v.dtype, tuple(v.shape)) for k, v in family.base.items()]
    for task, head in family.heads.items():
        specs.append((f"heads.{task}.weight", head.weight.dtype, tuple(head.weight.shape)))
        if head.bias is not None:
            specs.append((f"heads.{task}.bias", head.bias.dtype, tuple(head.bias.shape)))
    return specs


def checkpoint_tensors(family: Family, pref: Preference):
    # iter_materialized: at most one merged tensor alive at a time
    for k, v in family.iter_materialized(pref):
        yield f"visual.{k}", v
    for task, head in family.heads.items():
        yield f"heads.{task}.weight", head.weight
        if head.bias is not None:
            yield f"heads.{task}.bias", head.bias


def checkpoint_metadata(family: Family, pref: Preference) -> dict[str, str]:
    return {"family_id": family.family_id,
            "preference": json.dumps(pref.as_dict()),
            "architecture": json.dumps(family.manifest.architecture)}


def write_checkpoint(path: Path, family: Family, pref: Preference) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        write_stream(f, checkpoint_specs(family), checkpoint_tensors(family, pref), checkpoint_metadata(family, pref))


class DownloadCache:
    def __init__(self, root: Path, max_bytes: int, family: Family):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.family = family
        self.builds = 0
        self.hits = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    def etag(self, pref: Preference) -> str:
        # the file is a pure function of its key (families are immutable), so the key is the ETag
        return f'"{cache_key(self.family.family_id, pref)}"'

    def get(self, pref: Preference) -> CachedFile:
        """Open the checkpoint of `pref`, building it first if needed. Blocking: run it in a thread."""
        key = cache_key(self.family.family_id, pref)
        path = self.root / f"{key}{SUFFIX}"
        with self._key_lock(key):
            built = False
            try:
                f = open(path, "rb")
                os.utime(path)  # LRU: mtime is the last use
            except FileNotFoundError:
                t0 = time.monotonic()
                write_checkpoint(path, self.family, pref)
                log.info("built checkpoint %s for %s in %.2fs", path.name, pref.canonical, time.monotonic() - t0)
                f = open(path, "rb")
                built = True
            with self._guard:
                if built:
                    self.builds += 1
                else:
                    self.hits += 1
        self.evict(keep=path)
        size = os.fstat(f.fileno()).st_size
        name = f"{self.family.family_id}-{key[:12]}{SUFFIX}"
        return CachedFile(file=f, size=size, etag=self.etag(pref), filename=name, built=built)

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

    def evict(self, keep: Path) -> None:
        """Remove least recently used files until the cache fits its bound (`keep` always stays)."""
        with self._guard:
            entries = self.entries()
            total = sum(st.st_size for _, st in entries)
            for p, st in entries:
                if total <= self.max_bytes:
                    break
                key = p.name[: -len(SUFFIX)]
                lock = self._locks.get(key)
                # skip `keep` and any file being built or opened right now
                if p == keep or (lock is not None and not lock.acquire(blocking=False)):
                    continue
                try:
                    p.unlink(missing_ok=True)  # a running download keeps reading its open handle
                    self._locks.pop(key, None)
                finally:
                    if lock is not None:
                        lock.release()
                total -= st.st_size
                log.info("evicted %s (%d bytes)", p.name, st.st_size)
