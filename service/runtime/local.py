"""`LocalRuntime` (service/runtime/base.py says what a runtime is): the families and their engines
in this process."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional, Sequence

import numpy as np

from models_store.preference import Preference

from service.engine.downloads import CachedFile, NotModified
from service.errors import NotReady
from service.engine.families import Families, FamilyView, Served
from service.engine.images import Decoded
from service.metrics import Metrics
from service.settings import EngineSettings, Settings


from service.runtime.base import Logits, Readiness, Runtime

log = logging.getLogger(__name__)


def device_jpeg(engine: EngineSettings, device) -> bool:
    """PMERGE_DECODE: `device` decodes JPEGs on the engine's device, `host` never, `auto` on CUDA."""
    return engine.decode == "device" or (engine.decode == "auto" and device.type == "cuda")


class LocalRuntime(Runtime):
    """The families and their engines in this process."""

    def __init__(self, settings: Settings, metrics: Metrics):
        super().__init__(settings, metrics)
        self.families: Families = Families(settings.store, settings.families, settings.caches.max_families, open=self._open,
                                             serve=self._served, metrics=metrics)
        self.error: Optional[str] = None  # why loading failed, for /readyz
        self._downloader = ThreadPoolExecutor(2, thread_name_prefix="pmerge-download")

    # --- lifecycle (blocking parts in a thread) --------------------------------------------------

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise

    def load(self) -> None:
        """The default family: PMERGE_FAMILY, else the first of PMERGE_FAMILIES, else the newest."""
        from models_store.store import open_family
        s = self.settings
        default = s.family or (self.families.allowed[0] if self.families.allowed else None)
        served = self._served(open_family(s.store, default))  # verifies the sha256 of every file
        self.metrics.track_queue(self.families.queued)
        self.families.set_default(served)

    def _open(self, family_id: str):
        from models_store.store import open_family
        return open_family(self.settings.store, family_id)

    def _served(self, family) -> Served:
        from service.engine.downloads import DownloadCache
        from service.engine.batching import Engine, EngineConfig
        s, e = self.settings, self.settings.engine
        device = e.torch_device()
        config = EngineConfig(device=device, dtype=e.torch_dtype(device), max_batch=e.max_batch,
                              max_wait_ms=e.max_wait_ms, queue_size=e.queue_size,
                              device_cache_bytes=s.caches.device_cache_bytes, graphs=e.cuda_graphs,
                              device_jpeg=device_jpeg(e, device))
        engine = Engine.from_family(family, config, on_batch=self.metrics.observe_batch,
                                    on_queue_wait=self.metrics.queue_wait.observe)
        engine.start()
        log.info("serving family %s (%s) on %s/%s", family.family_id, ", ".join(family.tasks), device, config.dtype)
        view = FamilyView(family.manifest, family.digest, config.device_jpeg, tuple(family.costs(config.dtype)),
                          family.device_cache_bytes(config.dtype, config.device_cache_bytes))
        return Served(family, engine, DownloadCache(s.downloads_dir, s.caches.download_cache_bytes, family, device), view)

    def close(self) -> None:
        self.families.close()
        self._downloader.shutdown(wait=False, cancel_futures=True)
        super().close()

    async def readiness(self) -> Readiness:
        default = self.families.default
        if default is not None and default.engine.ready:
            return Readiness(True, default.family_id)
        if self.error:
            return Readiness(False, None, f"model not ready: {self.error}")
        if self.families.default_id is not None:
            return Readiness(False, self.families.default_id,
                             f"the default family {self.families.default_id!r} is not loaded: it was removed or "
                             f"replaced in the store, and loads again on its next request")
        return Readiness(False, None, "model is loading")

    # --- what the routes use -----------------------------------------------------------------

    @asynccontextmanager
    async def hold(self, family_id: Optional[str]) -> AsyncIterator[FamilyView]:
        served = await self._acquire(family_id)
        try:
            yield served.view
        finally:
            self.families.release(served)

    async def _acquire(self, family_id: Optional[str]) -> Served:
        if self.families.default_id is None:  # the default family is still loading (or failed to)
            ready = await self.readiness()
            raise NotReady(ready.detail or "model is loading", retry_after=5)
        family_id = family_id or self.families.default_id
        served = self.families.try_acquire(family_id)  # a resident family: no thread hop
        return served if served is not None else await asyncio.to_thread(self.families.acquire, family_id)

    def _resident(self, family: FamilyView) -> Served:
        served = self.families.resident.get(family.family_id)
        if served is None or served.view.digest != family.digest:
            raise NotReady(f"family {family.family_id!r} was unloaded meanwhile; retry", retry_after=1)
        return served

    async def admit(self, family: FamilyView, n: int) -> None:
        self._resident(family).engine.require_room(n)

    async def classify(self, family: FamilyView, files: Sequence[tuple[str, bytes]], prefs: np.ndarray) -> Logits:
        served = self._resident(family)
        with served.engine.admission(len(files)) as ticket:
            images = await self.decode(family, files)
            await self._resolve(served, prefs)
            future = ticket.submit(images, prefs, asyncio.get_running_loop())
        return await future

    @staticmethod
    async def _resolve(served: Served, prefs: np.ndarray) -> None:
        """Where a family's new preferences cost a solve (`slow_resolution`), resolve them in a thread
        first: the submit that follows finds them remembered, and the event loop never solves."""
        if served.family.body.slow_resolution:
            await asyncio.to_thread(served.engine.resolve, np.atleast_2d(np.asarray(prefs, dtype=np.float64)))

    @asynccontextmanager
    async def prepared(self, family: FamilyView, files: Sequence[tuple[str, bytes]]) -> AsyncIterator[list[Decoded]]:
        await self.admit(family, len(files))
        yield await self.decode(family, files)

    async def run(self, family: FamilyView, images: Sequence[Decoded], prefs: np.ndarray,
                  background: bool = False) -> Logits:
        """Classify decoded images (prepared here, or by a front-end process)."""
        served = self._resident(family)
        await self._resolve(served, prefs)
        return await served.engine.submit(images, prefs, asyncio.get_running_loop(), background)

    async def checkpoint(self, family: FamilyView, pref: Preference, if_none_match: Optional[str] = None
                         ) -> CachedFile | NotModified:
        loop = asyncio.get_running_loop()
        cached = await loop.run_in_executor(self._downloader, self._resident(family).downloads.get, pref,
                                            if_none_match)
        if isinstance(cached, CachedFile):
            self.metrics.downloads.labels("build" if cached.built else "hit").inc()
        return cached

    async def list_families(self) -> list[dict]:
        from models_store.store import list_families
        if self.families.default_id is None:
            ready = await self.readiness()
            raise NotReady(ready.detail or "model is loading", retry_after=5)
        known = self.families
        manifests = await asyncio.to_thread(list_families, self.settings.store)
        return [{"family_id": m.family_id, "method": m.method, "kind": m.kind, "created": m.created,
                 "tasks": m.task_names, "default": m.family_id == known.default_id,
                 "resident": m.family_id in known.resident}
                for m in manifests if known.allows(m.family_id)]
