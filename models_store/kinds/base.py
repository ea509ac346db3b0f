"""What every family kind shares: the kind's format contract, the servable's contract and steps,
and the one bounded cache of device objects (docs/formats.md, "Family"; docs/serving.md).

A kind is a class with `name`, `files` (the tensor files beside manifest.json and
heads.safetensors), `Params` (the pydantic model of its manifest's `kind_params`) and the methods of
`KindFormat`. Its servable is a `Servable`: `logits(images [N, C, S, S], prefs [N, K])` serves a
batch in which every image has its own preference, in two parts:

    plan(prefs)                       host work on the CPU preferences: which member, which distinct
                                      preference; data-dependent Python (.tolist()) lives here
    features(images, prefs, plan)     device work only, ending in a tensor [N, D] float32

so a device path never waits on the host in the middle of a forward, and the fake-CUDA tests run
the device part alone (tests/device/).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Iterator, Optional, TypeVar

import torch

from ..tower import head_logits
from ..zoo import Head

V = TypeVar("V")
Spec = tuple[str, torch.dtype, tuple[int, ...]]


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class DeviceCache(Generic[V]):
    """Least recently used objects kept on the device, bounded in bytes (PMERGE_DEVICE_CACHE_BYTES):
    the one cache of every kind (point-set members' towers, feature-map preference maps). One entry
    is always kept, however large, so a batch can be served. Evicted values go to `on_evict`, which
    may reuse their memory."""

    def __init__(self, max_bytes: int, on_evict: Optional[Callable[[V], None]] = None):
        self.max_bytes = max_bytes
        self.on_evict = on_evict or (lambda value: None)
        self.entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    def get(self, key: Hashable) -> Optional[V]:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def __getitem__(self, key: Hashable) -> V:
        """The entry of `key`, which must be there (a KeyError otherwise); now the most recently used."""
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def room(self, nbytes: int, keep: frozenset = frozenset()) -> list[V]:
        """Evict least recently used entries (never those in `keep`) until `nbytes` more fit; the
        evicted values, for their memory."""
        evicted = []
        for key in list(self.entries):
            if self.bytes + nbytes <= self.max_bytes:
                break
            if key in keep:
                continue
            value, size = self.entries.pop(key)
            self.bytes -= size
            evicted.append(value)
            self.on_evict(value)
        return evicted

    def put(self, key: Hashable, value: V, nbytes: int) -> V:
        self.misses += 1
        self.entries[key] = (value, nbytes)
        self.bytes += nbytes
        return value

    def __len__(self) -> int:
        return len(self.entries)


BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GraphedCalls:
    """Device functions replayed from CUDA graphs, one graph per (key, batch bucket): a forward of
    many small kernels costs one launch, which is what a GPU serving small batches waits on.

    A call copies its inputs into the graph's static buffers (padded up to the bucket; the padding
    rows are whatever the last batch left there, and their outputs are never read) and returns a
    view of the graph's static output, valid until the next replay of that graph: the caller
    consumes it first. Batches above the largest bucket run eagerly. All graphs of one servable
    share a memory pool: they run one at a time, on one stream."""

    def __init__(self, device: torch.device, buckets: tuple[int, ...] = BUCKETS):
        self.device, self.buckets = device, buckets
        self.graphs: dict[tuple[Hashable, int], tuple[Any, list[torch.Tensor], torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, key: Hashable, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        n = inputs[0].shape[0]
        bucket = next((b for b in self.buckets if b >= n), None)
        if bucket is None:
            return fn(*inputs)
        entry = self.graphs.get((key, bucket))
        if entry is None:
            entry = self.graphs[(key, bucket)] = self._capture(fn, inputs, bucket)
        graph, static, out = entry
        for buffer, x in zip(static, inputs):
            buffer[:n].copy_(x)
        graph.replay()
        return out[:n]

    def forget(self, key: Hashable) -> None:
        """Drop the graphs of `key` (a tower that is freed), and their memory."""
        for k in [k for k in self.graphs if k[0] == key]:
            del self.graphs[k]

    def _capture(self, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], bucket: int):
        static = [torch.zeros((bucket, *x.shape[1:]), dtype=x.dtype, device=self.device) for x in inputs]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the capture: lazy inits and autotuning happen here
            fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn(*static)
        return graph, static, out


class Servable(ABC):
    """A family's model on one device: heads in float32, the tower in the serving dtype. With
    `graphs` (CUDA only), the kind runs its forwards through `GraphedCalls`."""

    def __init__(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype, graphs: bool = False):
        self.heads = {t: h.to(device, torch.float32) for t, h in heads.items()}
        self.device, self.dtype = torch.device(device), dtype
        self.graphed = GraphedCalls(self.device) if graphs and self.device.type == "cuda" else None

    def run(self, key: Hashable, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """fn(*inputs), replayed from a CUDA graph when the servable has them (`graphs`)."""
        return fn(*inputs) if self.graphed is None else self.graphed(key, fn, *inputs)

    def plan(self, prefs: torch.Tensor) -> Any:
        """Host work for a batch, from its preferences [N, K] on the CPU (none by default)."""
        return None

    @abstractmethod
    def features(self, images: torch.Tensor, prefs: torch.Tensor, plan: Any) -> torch.Tensor:
        """images [N, 3, S, S] on the device in the serving dtype, prefs [N, K] on the device in float32
        -> the tower's output features [N, D], float32. Device work only."""

    def logits(self, images: torch.Tensor, prefs: torch.Tensor, plan: Any = ...) -> dict[str, torch.Tensor]:
        """{task: [N, C_task]} float32 on the device; `plan` defaults to `self.plan(prefs)`."""
        if plan is ...:
            plan = self.plan(prefs)
        with torch.no_grad():  # not inference_mode: a miss builds modules, which must stay usable after
            images = images.to(self.device)
            if images.shape[1] == 1:  # grayscale preprocess (channels=1): the patch conv takes RGB
                images = images.expand(-1, 3, -1, -1)
            feats = self.features(images.to(self.dtype), prefs.to(self.device, torch.float32), plan)
            return {t: head_logits(feats, h.weight, h.bias) for t, h in self.heads.items()}


class KindFormat(ABC):
    """A loaded family of one kind: its tensors, theta(pref) and its servable."""
    name: str
    files: tuple[str, ...]

    @abstractmethod
    def tower_specs(self) -> list[Spec]:
        """(name, dtype, shape) of every tensor of theta(pref), the same for every preference."""

    @abstractmethod
    def iter_materialized(self, pref: torch.Tensor, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """theta(pref) one tensor at a time, computed on `device` (so a writer holds one extra tensor)."""

    @abstractmethod
    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False) -> Servable:
        ...

    def members(self) -> list[dict[str, Any]]:
        """The finitely many models a family of this kind holds, if it holds such (point-set): each
        its `preference` and what its method said of it; none for kinds exact at every preference."""
        return []

    def iter_member(self, index: int, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """Member `index`'s tower, as `iter_materialized` gives a preference's."""
        raise IndexError(f"a {self.name} family has no members")
