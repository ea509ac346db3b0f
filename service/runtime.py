"""What the routes use: the family, the engine, the download cache, the decode pool.

Built by the app's lifespan; loading is blocking (hash checks, weights, warm-up) and runs in a
thread so the event loop keeps answering /healthz and /readyz (503) meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import torch

from models_store.family import Family
from models_store.store import open_family

from .downloads import CachedFile, DownloadCache
from .engine import Engine, EngineConfig, Logits
from .errors import NotReady
from .images import decode_images
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.family: Optional[Family] = None
        self.engine: Optional[Engine] = None
        self.downloads: Optional[DownloadCache] = None
        self.error: Optional[str] = None  # why loading failed, for /readyz
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="pmerge-decode")
        self._downloader = ThreadPoolExecutor(2, thread_name_prefix="pmerge-download")

    # --- lifecycle (blocking; the lifespan runs these in a thread) -------------------------

    def load(self) -> None:
        s = self.settings
        family = open_family(s.store, s.family)  # verifies the sha256 of every file
        device = s.torch_device()
        config = EngineConfig(device=device, dtype=s.torch_dtype(device), max_batch=s.max_batch,
                              max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
                              cached_towers=s.cached_towers)
        engine = Engine.from_family(family, config, on_batch=self.metrics.observe_batch,
                                    on_queue_wait=self.metrics.queue_wait.observe)
        pre = family.manifest.preprocess
        engine.start(sample=torch.zeros(pre.channels, pre.image_size, pre.image_size))
        self.metrics.track_queue(lambda: engine.queued)
        self.downloads = DownloadCache(s.downloads_dir, s.download_cache_bytes, family)
        self.family, self.engine = family, engine
        log.info("serving family %s (%s) on %s/%s", family.family_id, ", ".join(family.tasks), device, config.dtype)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._downloader.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready

    def require_ready(self) -> Family:
        if not self.ready:
            raise NotReady(f"model not ready: {self.error}" if self.error else "model is loading", retry_after=5)
        return self.family

    # --- async helpers for routes: blocking work off the event loop -------------------------

    def require_room(self, images: int) -> None:
        """Overloaded now, before a body is read, when the queue cannot take `images` more."""
        with self.engine.admission(images):
            pass

    async def classify(self, files: Sequence[tuple[str, bytes]], pref: torch.Tensor) -> Logits:
        """Decode (in the decode pool) and classify; queue places are held first, so a request the
        queue cannot take is refused undecoded."""
        pre = self.family.manifest.preprocess
        loop = asyncio.get_running_loop()
        with self.engine.admission(len(files)) as ticket:
            pixels = await loop.run_in_executor(self._decoder, decode_images, files, pre,
                                                self.settings.max_image_pixels)
            future = ticket.submit(pixels, pref)
        return await asyncio.wrap_future(future)

    async def checkpoint(self, pref) -> CachedFile:
        loop = asyncio.get_running_loop()
        cached = await loop.run_in_executor(self._downloader, self.downloads.get, pref)
        self.metrics.downloads.labels("build" if cached.built else "hit").inc()
        return cached
