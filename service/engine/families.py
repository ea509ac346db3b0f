"""The families one service serves: the default one, loaded at start, and any other family of the
store (or of PMERGE_FAMILIES), loaded on its first request. At most PMERGE_MAX_FAMILIES are
resident; loading one more evicts the least recently used family that has no request in flight,
never the default. A family published into the store while the service runs is found on its first
request; one removed (or replaced) while resident is noticed on its next request and unloaded.
Each resident family has its own engine, so batches never mix families.

A family that fails to load (a flipped byte, a half-copied directory) is a 503 that names it and
what is wrong, remembered for FAILURE_MEMORY_S (or until its manifest changes) so that a burst of
requests costs one load; it is read and verified before anything is evicted for it, so a load that
fails never costs a healthy resident family its place.

Plain module: the routes reach it through Runtime; tests drive it without HTTP."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from models_store import StoreError
from models_store.family import MANIFEST, FamilyManifest, FileCost, is_family_id, shown_id
from models_store.preference import Preference, parse_preference
from models_store.store import published

from service.errors import FamilyUnavailable, NotReady, ServiceError, UnknownFamily

if TYPE_CHECKING:
    from models_store.family import Family

    from service.engine.downloads import DownloadCache
    from service.engine.batching import Engine
    from service.metrics import Metrics

log = logging.getLogger(__name__)

FAILURE_MEMORY_S = 10.0  # a failed load answers again for this long before the next try
STORE_CHECK_S = 1.0  # a resident family is compared with the store at most this often (a stat costs
                     # more than the rest of a request's bookkeeping on a busy overlay file system)

Signature = Optional[tuple[int, int, int]]


def signature(path: Path | str) -> Signature:
    """What identifies the family directory's contents cheaply: its manifest's inode, mtime and size
    (families are immutable: a new manifest means the family was removed or replaced); None if gone."""
    try:
        st = os.stat(os.path.join(path, MANIFEST))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class FamilyView:
    """What a route knows of a family it holds: the verified manifest and its digest."""
    manifest: FamilyManifest
    digest: str
    device_jpeg: bool = False  # its engine decodes JPEG files on its device
    files: tuple[FileCost, ...] = ()  # each file's bytes on disk and on the device
    cache_bytes: int = 0  # the bound of its servable's device cache

    @property
    def family_id(self) -> str:
        return self.manifest.family_id

    @property
    def tasks(self) -> list[str]:
        return self.manifest.task_names

    @property
    def classes(self) -> dict[str, list[str]]:
        return {t.name: t.classes for t in self.manifest.tasks}

    def preference(self, text: Optional[str]) -> Preference:
        return parse_preference(text, self.tasks)


@dataclass
class Served:
    """A resident family: what its routes use."""
    family: "Family"
    engine: "Engine"
    downloads: "DownloadCache"
    view: FamilyView  # what routes see of it
    inflight: int = 0  # requests holding it (guarded by Families' lock)
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False  # unloaded while held: the last release stops its engine
    signature: Signature = None
    checked_at: float = field(default_factory=time.monotonic)

    @property
    def family_id(self) -> str:
        return self.family.family_id

    def current(self) -> bool:
        """Unchanged in the store, as of a check at most STORE_CHECK_S old."""
        now = time.monotonic()
        if now - self.checked_at < STORE_CHECK_S:
            return True
        if signature(self.path) != self.signature:
            return False
        self.checked_at = now
        return True

    @property
    def path(self) -> str:
        return str(self.family.path)


@dataclass
class Failure:
    error: ServiceError
    at: float
    signature: Signature

    def holds(self, now_signature: Signature) -> bool:
        return time.monotonic() - self.at < FAILURE_MEMORY_S and now_signature == self.signature


class Families:
    def __init__(self, store, allowed: Optional[list[str]], max_resident: int, open: Callable[[str], "Family"],
                 serve: Callable[["Family"], Served], metrics: Optional["Metrics"] = None):
        """`open(id)` reads and verifies a family (no device work); `serve(family)` puts it on the
        device behind its engine."""
        self.store, self.allowed, self.max_resident = Path(store), allowed, max_resident
        self._open, self._serve, self._metrics = open, serve, metrics
        self.default_id: Optional[str] = None
        self.resident: OrderedDict[str, Served] = OrderedDict()  # least recently used first
        self.loads = 0
        self.evictions = 0
        self._lock = threading.Condition()
        self._loading: set[str] = set()
        self._placed: set[str] = set()  # loads in progress that already hold a resident place
        self._failures: dict[str, Failure] = {}

    def set_default(self, served: Served) -> None:
        with self._lock:
            self.default_id = served.family_id
            served.signature = signature(served.family.path)
            self.resident[served.family_id] = served

    @property
    def default(self) -> Optional[Served]:
        return self.resident.get(self.default_id) if self.default_id else None

    def allows(self, family_id: str) -> bool:
        """Whether PMERGE_FAMILIES (or its absence) lets this service serve the id."""
        return self.allowed is None or family_id in self.allowed or family_id == self.default_id

    def check_known(self, family_id: str) -> None:
        """UnknownFamily (404) unless the id names a family this service may serve."""
        if not is_family_id(family_id) or not self.allows(family_id):
            raise UnknownFamily(f"family {shown_id(family_id)} is not served here (GET /families lists those that are)")
        if published(self.store, family_id) is None:
            raise UnknownFamily(f"no family {shown_id(family_id)} in this service's store (GET /families lists them)")

    # --- holding a family -----------------------------------------------------------------------

    def try_acquire(self, family_id: str) -> Optional[Served]:
        """The family held, when it is resident and unchanged on disk; None otherwise (then
        `acquire`, which may block). Cheap: the event loop calls it."""
        with self._lock:
            served = self.resident.get(family_id)
            if served is None or not served.current():
                return None
            return self._hold(served)

    def acquire(self, family_id: str) -> Served:
        """The family, loaded if need be, held until `release`: never evicted meanwhile. Blocking."""
        with self._lock:
            while True:
                served = self.resident.get(family_id)
                if served is not None:
                    if served.current():
                        return self._hold(served)
                    self._unload(served, "removed or replaced in the store")
                if family_id not in self._loading:
                    break
                self._lock.wait()  # another request is loading it
            self.check_known(family_id)
            failure = self._failures.get(family_id)
            if failure is not None and failure.holds(signature(self.store / family_id)):
                raise failure.error
            self._loading.add(family_id)
        try:
            served = self._load(family_id)
        finally:
            with self._lock:
                self._loading.discard(family_id)
                self._placed.discard(family_id)
                self._lock.notify_all()
        with self._lock:
            self.resident[family_id] = served
            self._failures.pop(family_id, None)
            self.loads += 1
            if self._metrics is not None:
                self._metrics.family_events.labels("loaded").inc()
            self._lock.notify_all()
            log.info("loaded family %s (%d resident)", family_id, len(self.resident))
            return self._hold(served)

    def release(self, served: Served) -> None:
        with self._lock:
            served.inflight -= 1
            stop = served.retired and served.inflight == 0
        if stop:
            served.engine.stop()

    def _hold(self, served: Served) -> Served:
        served.inflight += 1
        served.last_used = time.monotonic()
        self.resident.move_to_end(served.family_id)
        return served

    # --- loading, eviction, unloading -------------------------------------------------------------

    def _load(self, family_id: str) -> Served:
        """Read and verify, then make room, then serve; a failure is remembered and raised as a
        ServiceError that names the family."""
        path = self.store / family_id
        seen = signature(path)
        try:
            family = self._open(family_id)  # sha256 of every file: before anything is evicted for it
            with self._lock:
                victim = self._make_room(family_id)
            if victim is not None:
                self._evict(victim)
            served = self._serve(family)
            served.signature = seen
            return served
        except NotReady:
            raise  # every resident family busy: nothing wrong with this one
        except Exception as e:
            error = self._describe(family_id, path, e)
            with self._lock:
                self._failures[family_id] = Failure(error, time.monotonic(), seen)
            if self._metrics is not None:
                self._metrics.family_events.labels("load_failed").inc()
            log.warning("family %s failed to load: %s", family_id, error.detail)
            raise error from None

    @staticmethod
    def _describe(family_id: str, path: Path, e: Exception) -> ServiceError:
        if isinstance(e, ServiceError):
            return e
        if signature(path) is None:  # removed while it loaded
            return UnknownFamily(f"family {family_id!r} was removed from the store while it loaded")
        what = str(e) if isinstance(e, StoreError) else f"{type(e).__name__}: {e}"
        return FamilyUnavailable(f"family {family_id!r} cannot be loaded: {what}", retry_after=int(FAILURE_MEMORY_S))

    def _make_room(self, family_id: str) -> Optional[Served]:
        """Under the lock: a place for one more; the family to evict for it, or None when there is room."""
        if len(self.resident) + len(self._placed) < self.max_resident:
            self._placed.add(family_id)
            return None
        for other_id, served in self.resident.items():  # least recently used first
            if other_id != self.default_id and served.inflight == 0 and served.engine.queued == 0:
                del self.resident[other_id]
                self._placed.add(family_id)
                return served
        raise NotReady(f"all {self.max_resident} resident families are in use (PMERGE_MAX_FAMILIES); try again",
                       retry_after=1)

    def _evict(self, served: Served) -> None:
        served.engine.stop()
        self.evictions += 1
        if self._metrics is not None:
            self._metrics.family_events.labels("evicted").inc()
        log.info("evicted family %s (least recently used)", served.family_id)
        if served.engine.config.device.type == "cuda":
            import torch
            torch.cuda.empty_cache()

    def _unload(self, served: Served, why: str) -> None:
        """Under the lock: out of the resident set; its engine stops now, or at its last release."""
        del self.resident[served.family_id]
        served.retired = True
        if self._metrics is not None:
            self._metrics.family_events.labels("unloaded").inc()
        log.info("unloaded family %s: %s", served.family_id, why)
        if served.inflight == 0:
            threading.Thread(target=served.engine.stop, name="pmerge-unload", daemon=True).start()

    def queued(self) -> int:
        return sum(s.engine.queued for s in list(self.resident.values()))

    def close(self) -> None:
        with self._lock:
            resident = list(self.resident.values())
        for served in resident:
            served.engine.stop()
