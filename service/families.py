"""The families one service serves: the default one, loaded at start and always resident, and any
other family of the store (or of PMERGE_FAMILIES), loaded on its first request. At most
PMERGE_MAX_FAMILIES are resident; loading one more evicts the least recently used family that has
no request in flight. A family published into the store while the service runs is found on its
first request. Each resident family has its own engine, so batches never mix families.

Plain module: the routes reach it through Runtime; tests drive it without HTTP."""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from models_store.family import Family
from models_store.store import published

from .downloads import DownloadCache
from .engine import Engine
from .errors import NotReady, UnknownFamily

log = logging.getLogger(__name__)

FAMILY_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")  # the manifest's pattern: never a path


@dataclass
class Served:
    """A resident family: what its routes use."""
    family: Family
    engine: Engine
    downloads: DownloadCache
    inflight: int = 0  # requests holding it (guarded by Families' lock)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def family_id(self) -> str:
        return self.family.family_id


def parse_family_ids(text: Optional[str]) -> Optional[list[str]]:
    """PMERGE_FAMILIES: comma-separated ids; unset or empty: every family of the store."""
    if not text or not text.strip():
        return None
    ids = [i.strip() for i in text.split(",") if i.strip()]
    bad = [i for i in ids if not FAMILY_ID.match(i)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a family id (letters, digits, _ . + -)")
    return ids


class Families:
    def __init__(self, store, allowed: Optional[list[str]], max_resident: int, load: Callable[[str], Served]):
        self.store, self.allowed, self.max_resident, self._load = store, allowed, max_resident, load
        self.default_id: Optional[str] = None
        self.resident: OrderedDict[str, Served] = OrderedDict()  # least recently used first
        self.loads = 0
        self.evictions = 0
        self._lock = threading.Condition()
        self._loading: set[str] = set()

    def set_default(self, served: Served) -> None:
        with self._lock:
            self.default_id = served.family_id
            self.resident[served.family_id] = served

    @property
    def default(self) -> Optional[Served]:
        return self.resident.get(self.default_id) if self.default_id else None

    def allows(self, family_id: str) -> bool:
        """Whether PMERGE_FAMILIES (or its absence) lets this service serve the id."""
        return self.allowed is None or family_id in self.allowed or family_id == self.default_id

    def check_known(self, family_id: str) -> None:
        """UnknownFamily (404) unless the id names a family this service may serve."""
        if not FAMILY_ID.match(family_id) or not self.allows(family_id):
            raise UnknownFamily(f"family {family_id!r} is not served here (GET /families lists those that are)")
        if published(self.store, family_id) is None:
            raise UnknownFamily(f"no family {family_id!r} in this service's store (GET /families lists them)")

    def acquire(self, family_id: str) -> Served:
        """The family, loaded if need be, held until `release`: never evicted meanwhile. Blocking."""
        with self._lock:
            while True:
                served = self.resident.get(family_id)
                if served is not None:
                    served.inflight += 1
                    served.last_used = time.monotonic()
                    self.resident.move_to_end(family_id)
                    return served
                if family_id not in self._loading:
                    break
                self._lock.wait()  # another request is loading it
            self.check_known(family_id)
            victim = self._make_room()
            self._loading.add(family_id)
        try:
            if victim is not None:
                self._evict(victim)
            served = self._load(family_id)
        finally:
            with self._lock:
                self._loading.discard(family_id)
                self._lock.notify_all()
        with self._lock:
            self.loads += 1
            served.inflight += 1
            self.resident[family_id] = served
            self._lock.notify_all()
        log.info("loaded family %s (%d resident)", family_id, len(self.resident))
        return served

    def release(self, served: Served) -> None:
        with self._lock:
            served.inflight -= 1

    def _make_room(self) -> Optional[Served]:
        """Under the lock: the family to evict for one more, or None when there is room."""
        if len(self.resident) + len(self._loading) < self.max_resident:
            return None
        for family_id, served in self.resident.items():  # least recently used first
            if family_id != self.default_id and served.inflight == 0 and served.engine.queued == 0:
                del self.resident[family_id]
                return served
        raise NotReady(f"all {self.max_resident} resident families are in use (PMERGE_MAX_FAMILIES); try again",
                       retry_after=1)

    def _evict(self, served: Served) -> None:
        served.engine.stop()
        self.evictions += 1
        log.info("evicted family %s (least recently used)", served.family_id)
        if served.engine.config.device.type == "cuda":
            torch.cuda.empty_cache()

    def queued(self) -> int:
        return sum(s.engine.queued for s in list(self.resident.values()))

    def close(self) -> None:
        with self._lock:
            resident = list(self.resident.values())
        for served in resident:
            served.engine.stop()
