"""What every family kind shares (docs/formats.md, "Family"; docs/serving.md): the kind contract,
the servable's contract and steps, the one bounded cache of device objects, and the generic
servable that serves any kind through plain towers.

A kind is a class with `name`, `files` (the tensor files beside manifest.json and
heads.safetensors), `Params` (the pydantic model of its manifest's `kind_params`), `load` and the
methods of `KindFormat`. A preference reaches a model in two steps:

    resolve(preferences) -> variants   host work, pure, memoised per family; the one rounding of a
                                       preference (models_store.preference.canonical_weights) is here.
                                       A variant is what the kind needs to build one model, in plain
                                       numbers (weights, a member's index, coefficients), and
                                       `variant_key(variant)` is its identity everywhere: the device
                                       cache, the download cache, the ETag, the engine's messages
    materialize(variant, device)       that model as a plain open_clip tower, one tensor at a time

A servable serves a batch in which every image has its own variant, in two parts:

    plan(variants)                    host work: grouping rows by variant; data-dependent Python here
    features(images, plan)            device work only, ending in a tensor [N, D] float32

so a device path never waits on the host in the middle of a forward, and the fake-CUDA tests run
the device part alone (tests/device/). `VariantServable` serves any kind that way (each variant's
materialised tower, in the device cache); a kind with a faster exact path (lowrank, feature-map)
brings its own servable.
"""
from __future__ import annotations

import copy
import itertools
import json
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Iterator, Optional, Sequence, TypeVar

import torch

from ..preference import canonical_weights
from ..tower import build_tower, head_logits, with_layers
from ..zoo import Head

V = TypeVar("V")
K = TypeVar("K", bound="KindFormat")
Spec = tuple[str, torch.dtype, tuple[int, ...]]
# one model a kind serves, in plain numbers (tuples of floats, ints, None): hashable, and the same
# value in every process. Any to the type checker: each kind narrows it to its own (Weights, a
# member's index, ...)
Variant = Any
Weights = tuple[float, ...]
RESOLVED = 4096  # preferences whose variant a family remembers (host memory: a few hundred KiB)


def variant_key(variant: Variant) -> str:
    """A variant's identity as text (compact JSON): the same in every process and every run."""
    return json.dumps(variant, separators=(",", ":"))


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cast_bytes(state: dict[str, torch.Tensor], dtype: torch.dtype) -> int:
    """A state's bytes with its floating-point tensors in `dtype` (as a servable holds its tower)."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in state.values())


class DeviceCache(Generic[V]):
    """Least recently used objects kept on the device, bounded in bytes (PMERGE_DEVICE_CACHE_BYTES):
    the one cache of every kind (variants' towers, feature-map preference maps). One entry
    is always kept, however large, so a batch can be served. Entries put with `evict_first` (towers
    that one pass over the family's tensors rebuilds) go before the others, least recently used
    first within each. Evicted values go to `on_evict`, which may reuse their memory."""

    def __init__(self, max_bytes: int, on_evict: Optional[Callable[[V], None]] = None):
        self.max_bytes = max_bytes
        self.on_evict = on_evict or (lambda value: None)
        self.entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.first: set[Hashable] = set()  # the keys put with evict_first
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
        order = sorted(self.entries, key=lambda key: key not in self.first)  # stable: LRU within each
        for key in order:
            if self.bytes + nbytes <= self.max_bytes:
                break
            if key in keep:
                continue
            value, size = self.entries.pop(key)
            self.first.discard(key)
            self.bytes -= size
            evicted.append(value)
            self.on_evict(value)
        return evicted

    def put(self, key: Hashable, value: V, nbytes: int, evict_first: bool = False) -> V:
        self.misses += 1
        self.entries[key] = (value, nbytes)
        if evict_first:
            self.first.add(key)
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

    @abstractmethod
    def plan(self, variants: Sequence[Variant]) -> Any:
        """Host work for a batch whose image i is served by variants[i]."""

    @abstractmethod
    def features(self, images: torch.Tensor, plan: Any) -> torch.Tensor:
        """images [N, 3, S, S] on the device in the serving dtype, and the batch's plan -> the towers'
        output features [N, D], float32. Device work only."""

    def logits(self, images: torch.Tensor, variants: Sequence[Variant], plan: Any = ...) -> dict[str, torch.Tensor]:
        """{task: [N, C_task]} float32 on the device; `plan` defaults to `self.plan(variants)`."""
        if plan is ...:
            plan = self.plan(variants)
        with torch.no_grad():  # not inference_mode: a miss builds modules, which must stay usable after
            images = images.to(self.device)
            if images.shape[1] == 1:  # grayscale preprocess (channels=1): the patch conv takes RGB
                images = images.expand(-1, 3, -1, -1)
            feats = self.features(images.to(self.dtype), plan)
            return {t: head_logits(feats, h.weight, h.bias) for t, h in self.heads.items()}


def groups(variants: Sequence[Variant]) -> list[tuple[Variant, list[int]]]:
    """The distinct variants of a batch, in first-seen order, each with its rows."""
    rows: dict[Variant, list[int]] = {}
    for i, variant in enumerate(variants):
        rows.setdefault(variant, []).append(i)
    return list(rows.items())


class Memo:
    """A bounded map (least recently used out), safe across threads: a family's resolutions are
    made where requests are parsed (an event loop, a thread for a solve) and read by all."""

    def __init__(self, size: int = RESOLVED):
        self.size, self.lock = size, threading.Lock()
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        with self.lock:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self.lock:
            self.entries[key] = value
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)


def rows_of(preferences: Any) -> list[list[float]]:
    """Preference rows [N, K] (a tensor, an array or nested sequences) as host lists."""
    return preferences.tolist() if hasattr(preferences, "tolist") else [list(row) for row in preferences]


class KindFormat(ABC):
    """A loaded family of one kind: its tensors, its variants and their towers, and its servable."""
    name: str
    files: tuple[str, ...]
    architecture: dict
    # True where resolving a new preference costs real work (a solve): callers resolve it in a thread
    slow_resolution: bool = False

    # --- variants ---------------------------------------------------------------------------------

    def variant(self, weights: Weights) -> Variant:
        """The variant serving canonical weights (host work; default: the weights themselves, for
        kinds exact at every preference)."""
        return weights

    def resolve(self, preferences: Any) -> list[Variant]:
        """The variant of each preference row [N, K] (float32 or float64, on the simplex): the
        weights are made canonical here, once, then the kind's `variant`, remembered per family."""
        memo = self.__dict__.get("_memo")
        if memo is None:
            memo = self.__dict__.setdefault("_memo", Memo())
        out = []
        for row in rows_of(preferences):
            weights = canonical_weights(row)
            variant = memo.get(weights)
            if variant is None:
                variant = self.variant(weights)
                memo.put(weights, variant)
            out.append(variant)
        return out

    def describe(self, variant: Variant) -> dict[str, Any]:
        """What a variant is, for a checkpoint's metadata: {"preference": [K]} where it is one
        preference's model (the default), else what identifies it."""
        return {"preference": list(variant)}

    @abstractmethod
    def materialize(self, variant: Variant, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """The variant's plain open_clip tower, one tensor at a time, computed on `device` (so a
        writer holds one extra tensor); host work (a solve, a map's weights) is done at the call."""

    def iter_materialized(self, pref: torch.Tensor, device: torch.device = torch.device("cpu")
                          ) -> Iterator[tuple[str, torch.Tensor]]:
        """The tower serving one preference [K]: its variant's."""
        return self.materialize(self.resolve([pref.tolist()])[0], device)

    def kept_blocks(self, variant: Variant) -> Optional[list[int]]:
        """The transformer blocks the variant's tower runs, or None for all: a variant whose other
        blocks are the identity (a point-set member's skipped blocks) is served without them."""
        return None

    def on_device(self, device: torch.device) -> "KindFormat":
        """This family with the tensors `materialize` reads moved to `device` (for serving: a miss
        materialises there); a shallow copy that shares the memo."""
        return self

    # --- shapes and serving -----------------------------------------------------------------------

    @abstractmethod
    def tower_specs(self) -> list[Spec]:
        """(name, dtype, shape) of every tensor of a variant's tower, the same for every variant."""

    def resident_bytes(self, dtype: torch.dtype, stored: dict[str, int]) -> dict[str, int]:
        """What the servable keeps on the device for each of the kind's files, beside its cache, when
        serving in `dtype`; `stored` is each file's tensor bytes. Default: the generic servable, which
        holds every tensor the kind loaded, as stored."""
        return {name: stored[name] for name in self.files}

    def host_bytes(self, stored: dict[str, int]) -> dict[str, int]:
        """What the servable keeps in host memory on an accelerator, per file (read from there a piece
        at a time); default none."""
        return {}

    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False) -> Servable:
        """The family on `device` (default: the generic servable)."""
        return VariantServable(self, heads, device, dtype, cache_bytes, graphs)

    def members(self) -> list[dict[str, Any]]:
        """The finitely many models a family of this kind holds, if it holds such (point-set): each
        its `preference` and what its method said of it; none for kinds exact at every preference."""
        return []

    def moved(self: K, **tensors: Any) -> K:
        """A shallow copy with these attributes replaced (on_device's helper)."""
        out = copy.copy(self)
        out.__dict__.setdefault("_memo", self.__dict__.setdefault("_memo", Memo()))
        out.__dict__.update(tensors)
        return out


class TowerCache:
    """Plain open_clip towers on the device, built from a kind's tensor stream, kept in a
    DeviceCache (the servable's one cache, which may hold its maps as well). A miss copies into an
    evicted tower's memory when it is as deep; a tower evicted for it may be one this batch ran
    already: its forward is queued before the copy that overwrites it."""

    def __init__(self, architecture: dict, specs: list[Spec], device: torch.device, dtype: torch.dtype,
                 cache: DeviceCache, graphed: Optional[GraphedCalls]):
        self.architecture, self.specs, self.device, self.dtype = architecture, specs, device, dtype
        self.cache, self.graphed = cache, graphed
        self.spare: list[torch.nn.Module] = []  # evicted towers, whose memory a miss may reuse
        cache.on_evict = lambda value: self.spare.append(value) if isinstance(value, torch.nn.Module) else None
        self._made = itertools.count()
        self.built = 0  # towers materialised so far (tests, benchmarks)

    def nbytes(self, kept: Optional[list[int]]) -> int:
        return tensor_bytes(torch.empty(shape, dtype=self.dtype if dtype.is_floating_point else dtype, device="meta")
                            for name, dtype, shape in self.specs if _kept(name, kept) is not None)

    def get(self, key: Hashable, tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]],
            kept: Optional[list[int]] = None, keep: frozenset = frozenset()) -> torch.nn.Module:
        """The tower cached under `key`, else built from `tensors()` (a tower's tensors, streamed),
        with only the blocks `kept` (None: all)."""
        tower = self.cache.get(key)
        if tower is not None:
            return tower
        nbytes = self.nbytes(kept)
        self.cache.room(nbytes, keep)
        depth = None if kept is None else len(kept)
        tower = next((t for t in self.spare if t.kept_depth == depth), None)
        if tower is not None:
            self.spare.remove(tower)
        else:
            arch = self.architecture if kept is None else with_layers(self.architecture, len(kept))
            tower = build_tower(arch).to(self.device, self.dtype)
            tower.kept_depth = depth
            tower.graph_key = ("tower", next(self._made))  # its graphs read its memory, whoever's weights
        for freed in self.spare:  # what was not reused is freed, with its graphs
            if self.graphed is not None:
                self.graphed.forget(freed.graph_key)
        self.spare.clear()
        targets = tower.state_dict()
        with torch.no_grad():
            for name, value in tensors():
                target = _kept(name, kept)
                if target is not None:
                    targets[target].copy_(value)
        self.built += 1
        return self.cache.put(key, tower, nbytes, evict_first=True)


def _kept(name: str, kept: Optional[list[int]]) -> Optional[str]:
    """A tensor's name in a tower of the `kept` blocks only, or None where its block is left out."""
    if kept is None or not name.startswith(BLOCKS):
        return name
    block, _, rest = name[len(BLOCKS):].partition(".")
    index = int(block)
    return f"{BLOCKS}{kept.index(index)}.{rest}" if index in kept else None


BLOCKS = "transformer.resblocks."


class VariantServable(Servable):
    """Any kind on a device: a batch's rows grouped by variant, each variant's tower (the kind's
    `materialize`, computed on the device) run on its rows; the towers kept in the one cache."""

    def __init__(self, kind: KindFormat, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False):
        super().__init__(heads, device, dtype, graphs)
        self.kind = kind.on_device(self.device)
        self.cache: DeviceCache[torch.nn.Module] = DeviceCache(cache_bytes)
        self.towers = TowerCache(kind.architecture, kind.tower_specs(), self.device, dtype, self.cache, self.graphed)

    @property
    def materialized(self) -> int:
        """Towers materialised so far (tests, benchmarks)."""
        return self.towers.built

    def plan(self, variants: Sequence[Variant]) -> list[tuple[Variant, list[int]]]:
        return groups(variants)

    def tower(self, variant: Variant) -> torch.nn.Module:
        return self.towers.get(variant, lambda: self.kind.materialize(variant, self.device),
                               self.kind.kept_blocks(variant))

    def features(self, images: torch.Tensor, plan: list[tuple[Variant, list[int]]]) -> torch.Tensor:
        """One forward per variant of the batch, on its images."""
        features: Optional[torch.Tensor] = None
        for variant, rows in plan:
            at = torch.tensor(rows, device=self.device)
            tower = self.tower(variant)
            out = self.run(tower.graph_key, tower, images[at]).float()
            if features is None:
                features = out.new_empty(len(images), out.shape[1])
            features[at] = out
        if features is None:
            raise ValueError("a batch of no image")
        return features
