"""What the routes use: the families (each with its engine and download cache), the decode pool.

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
from .families import Families, Served, parse_family_ids
from .images import decode_images
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        allowed = parse_family_ids(settings.families)
        self.families = Families(settings.store, allowed, settings.max_families, open=self._open, serve=self._served,
                                 metrics=metrics)
        self.error: Optional[str] = None  # why loading failed, for /readyz
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="pmerge-decode")
        self._downloader = ThreadPoolExecutor(2, thread_name_prefix="pmerge-download")

    # --- lifecycle (blocking; the lifespan runs these in a thread) -------------------------

    def load(self) -> None:
        """The default family: PMERGE_FAMILY, else the first of PMERGE_FAMILIES, else the newest."""
        s = self.settings
        default = s.family or (self.families.allowed or [None])[0]
        served = self._served(open_family(s.store, default))  # verifies the sha256 of every file
        self.metrics.track_queue(self.families.queued)
        self.families.set_default(served)

    def _open(self, family_id: str) -> Family:
        return open_family(self.settings.store, family_id)

    def _served(self, family: Family) -> Served:
        s = self.settings
        device = s.torch_device()
        config = EngineConfig(device=device, dtype=s.torch_dtype(device), max_batch=s.max_batch,
                              max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
                              device_cache_bytes=s.device_cache_bytes, graphs=s.cuda_graphs)
        engine = Engine.from_family(family, config, on_batch=self.metrics.observe_batch,
                                    on_queue_wait=self.metrics.queue_wait.observe)
        engine.start()
        log.info("serving family %s (%s) on %s/%s", family.family_id, ", ".join(family.tasks), device, config.dtype)
        return Served(family, engine, DownloadCache(s.downloads_dir, s.download_cache_bytes, family))

    def close(self) -> None:
        self.families.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._downloader.shutdown(wait=False, cancel_futures=True)

    # the default family's parts (the routes without a /families/{id} prefix)
    @property
    def family(self) -> Optional[Family]:
        return None if self.families.default is None else self.families.default.family

    @property
    def engine(self) -> Optional[Engine]:
        return None if self.families.default is None else self.families.default.engine

    @property
    def downloads(self) -> Optional[DownloadCache]:
        return None if self.families.default is None else self.families.default.downloads

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready

    def require_ready(self) -> Family:
        if not self.ready:
            if self.error:
                raise NotReady(f"model not ready: {self.error}", retry_after=5)
            if self.families.default_id is not None and self.families.default is None:
                raise NotReady(f"the default family {self.families.default_id!r} is not loaded: it was removed or "
                               f"replaced in the store, and loads again on its next request", retry_after=5)
            raise NotReady("model is loading", retry_after=5)
        return self.family

    # --- async helpers for routes: blocking work off the event loop -------------------------

    async def acquire(self, family_id: Optional[str]) -> Served:
        """The default family (None) or a named one, loaded on first use; `release` it afterwards.
        A resident family is held right here; only a load takes a thread."""
        if self.families.default_id is None:  # the default family is still loading (or failed to)
            self.require_ready()
        family_id = family_id or self.families.default_id
        served = self.families.try_acquire(family_id)
        return served if served is not None else await asyncio.to_thread(self.families.acquire, family_id)

    def release(self, served: Served) -> None:
        self.families.release(served)

    async def classify(self, served: Served, files: Sequence[tuple[str, bytes]], prefs: torch.Tensor) -> Logits:
        """Decode (in the decode pool) and classify; queue places are held first, so a request the
        queue cannot take is refused undecoded."""
        pre = served.family.manifest.preprocess
        loop = asyncio.get_running_loop()
        with served.engine.admission(len(files)) as ticket:
            pixels = await loop.run_in_executor(self._decoder, decode_images, files, pre,
                                                self.settings.max_image_pixels)
            future = ticket.submit(pixels, prefs)
        return await asyncio.wrap_future(future)

    async def checkpoint(self, served: Served, pref) -> CachedFile:
        loop = asyncio.get_running_loop()
        cached = await loop.run_in_executor(self._downloader, served.downloads.get, pref)
        self.metrics.downloads.labels("build" if cached.built else "hit").inc()
        return cached
