"""What the routes talk to: a `Runtime`, which holds families, classifies images and builds
checkpoints. Two of them, one contract:

- `LocalRuntime` (service/runtime/local.py): the engines in this process, as `create_app(settings)`
  makes it (the tests, Ray Serve's replicas, `--front-ends 0`);
- `RemoteRuntime` (service/runtime/remote.py): a front-end process of `pmerge serve`, which parses,
  checks and decodes there and hands the decoded images to the engine process through shared memory.

Decoding runs in a pool of `PMERGE_DECODE_THREADS` threads, never on the event loop; queue places
are held before a body is decoded, so a request the queue cannot take is refused undecoded.
"""
from __future__ import annotations

import asyncio
import time
import logging
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncContextManager, Optional, Sequence

import numpy as np

from models_store.preference import Preference

from service.engine.downloads import CachedFile, NotModified
from service.engine.families import FamilyView
from service.engine.images import Decoded, decode_uploads
from service.metrics import Metrics
from service.settings import Settings


log = logging.getLogger(__name__)

Logits = dict[str, np.ndarray]  # task -> [N, C_task] float32
Prepared = Any  # a runtime's own handle on decoded images: Decoded images here, shared-memory places in a front


@dataclass(frozen=True)
class Readiness:
    ready: bool
    family_id: Optional[str] = None
    detail: Optional[str] = None


class Runtime(ABC):
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self._decoder = ThreadPoolExecutor(settings.engine.decode_threads, thread_name_prefix="pmerge-decode")

    # --- lifecycle: the lifespan calls these ---------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Load (or connect to what loads) the default family; raises when it cannot."""

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    @abstractmethod
    async def readiness(self) -> Readiness:
        ...

    # --- what the routes use -----------------------------------------------------------------

    @abstractmethod
    def hold(self, family_id: Optional[str]) -> AsyncContextManager[FamilyView]:
        """`async with runtime.hold(id) as family`: the family (None: the default), loaded on first use,
        not evicted while held; UnknownFamily (404) or FamilyUnavailable (503) otherwise."""

    @abstractmethod
    async def admit(self, family: FamilyView, n: int) -> None:
        """Overloaded (503) now, before a body is read, when the family's queue cannot take n images."""

    @abstractmethod
    async def classify(self, family: FamilyView, files: Sequence[tuple[str, bytes]], prefs: np.ndarray) -> Logits:
        """Decode `files` and classify them, image i under prefs[i] ([N, K], or one [K] for all)."""

    @abstractmethod
    def prepared(self, family: FamilyView, files: Sequence[tuple[str, bytes]]) -> "AsyncContextManager[Prepared]":
        """`async with runtime.prepared(family, files) as images`: the files decoded once (queue room
        checked first), for several `run`s of them under other preferences (POST /select)."""

    @abstractmethod
    async def run(self, family: FamilyView, images: "Prepared", prefs: np.ndarray, background: bool = False) -> Logits:
        """Classify prepared images, image i under prefs[i] ([N, K], or one [K] for all); `background`
        work is served where foreground requests leave room in a batch."""

    @abstractmethod
    async def checkpoint(self, family: FamilyView, pref: Preference, if_none_match: Optional[str] = None
                         ) -> CachedFile | NotModified:
        """The checkpoint of the variant serving `pref`, or NotModified when `if_none_match` names its ETag."""

    @abstractmethod
    async def list_families(self) -> list[dict]:
        """Every family served: manifest summary, default, resident (newest first)."""

    async def decode(self, family: FamilyView, files: Sequence[tuple[str, bytes]]) -> list[Decoded]:
        def timed() -> list[Decoded]:
            start = time.thread_time()
            try:
                return decode_uploads(files, family.manifest.preprocess, self.settings.limits.max_image_pixels,
                                      family.device_jpeg)
            finally:
                self.metrics.cpu.labels("decode").inc(time.thread_time() - start)
        return await asyncio.get_running_loop().run_in_executor(self._decoder, timed)


