"""Serving benchmark: one preference per image, without and with materialised weights.

For every architecture (default: the real open_clip ViT-B/32 and ViT-L/14 towers, random
weights, a random family of rank 16 on every block's attn in_proj and out_proj, K tasks) and
every batch size, three ways to get the features of a batch, measured interleaved (the order
rotates every repeat):

* **a / plain**: the plain tower forward `tower(images)`: one model, no preference at all;
  the ceiling.
* **b / mixed**: the service's forward (models_store/kinds/lowrank.py `LowRankServable.features`) where
  every image of the batch carries its own random preference: base GEMMs plus
  `((x B) M_i^T) A^T` per adapted projection, no weights materialised.
* **c / materialise**: what a naive server does: for every distinct preference in the batch
  (here: every image), materialise theta(pref) = base + A (sum_k pref_k G_k) B^T for every
  adapted tensor (the math of models_store.family `Family.iter_materialized`) and run the
  tower on that preference's images with those weights (`torch.func.functional_call`; the
  unadapted tensors are shared, not copied, so this is a lower bound of a naive server's cost).

* **f / feature-map**: the feature-map kind's forward (models_store/kinds/feature_map.py
  `FeatureMapServable.features`, ReACT): the plain forward, then every image's features through its
  own preference's d x d map, solved from K random per-task maps (every image of the batch has its
  own preference and the cache is emptied before every call: the worst case of its cache).
* **m / anchored-map**: the anchored-map kind's forward (models_store/kinds/anchored_map.py
  `AnchoredMapServable.features`, ReACT anchored at the fine-tuned towers, anchor 0.7): f's
  preferences, except every fourth image's, which is the vertex of task 0 or 0.85 on task 1 in
  turn (clients who want one task's fine-tuned quality): the base tower on three quarters of the
  batch, one anchored tower (warm in the cache) on each eighth, then every image's map.
* **ag, bg, fg**: a, b and f replayed from CUDA graphs, one per batch size (kinds/base.py
  `GraphedCalls`; CUDA only, `--graphs`): what the service runs with PMERGE_CUDA_GRAPHS.
  c is timed only with `--time-materialise` (it is seconds per batch on a GPU); its one untimed
  call per batch size checks b against it.

And the point-set kind (served by models_store/kinds/base.py `VariantServable`), at one batch size
(`--member-batch`, default 64) beside a and b in the same interleaved rounds: a batch whose
images pick d = 1, 2, 4, 8 distinct members (`--members`), **warm** (every member's tower already
on the device) and **cold** (every call picks d members that are not cached, so each is
materialised from theta0 and the task vectors into an evicted tower's memory first: the
steady-state cost of a cache miss), and with CUDA graphs, warm (`wg<d>`, against `ag`). Target on
a GPU: warm >= 0.85 x plain with up to 4 members (graphed against graphed when graphs are on).

Precision as the service (service/settings.py): bf16 on CUDA by default (`--dtype`), float32
on CPU. Reported per batch: p50 / p99 latency, images/s (batch / p50 latency; the mean-based
figure is in the JSON too), and the throughput ratios b/a and c/a (> 1: faster than a). An
untimed first batch of every size also checks that b and c agree (max |b - c| relative to |c|).

Target: on a GPU, b >= 0.9 x a in images/s at batch >= 64 (the low-rank path adds ~1.35%
FLOPs on B/32, ~1.0% on L/14, its FLOPs: docs/serving.md), and far ahead of c.
On a CPU the script only reports (smaller batch sizes and repeats, one thread: bench/README.md).

    python bench/serve_bench.py                                    # GPU if present
    python bench/serve_bench.py --archs tiny --batch-sizes 1,4 --repeats 3
    python bench/serve_bench.py --batch-sizes 1,4,16 ViT-L-14=1,4  # per-architecture override
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as `python bench/serve_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.func import functional_call

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, round_ratios, run_benchmark,
                          run_interleaved, spread_text, summarize, write_result)
from models_store.kinds.anchored_map import AnchoredMapFamily, AnchoredMapParams
from models_store.task_tensors import TaskTensors
from models_store.kinds.base import VariantServable
from models_store.kinds.base import GraphedCalls
from models_store.kinds.feature_map import FeatureMapServable
from models_store.kinds.lowrank import TARGETS, LowRank, LowRankServable, target_names
from models_store.kinds.point_set import Member, Members, PointSetFamily, PointSetParams
from models_store.preference import canonical_weights
from models_store.tower import build_tower, image_size, resolve_architecture
from service.settings import DTYPES

NAME = "serve"
GPU_DEFAULTS = {"batch_sizes": {"*": [1, 8, 64, 128]}, "repeats": 30, "warmup": 3, "dtype": "bf16"}
CPU_DEFAULTS = {"batch_sizes": {"*": [1, 4, 16], "ViT-L-14": [1, 4]}, "repeats": 7, "warmup": 0, "dtype": "fp32"}
VARIANTS = {"a": "plain", "b": "mixed", "c": "materialise", "f": "feature-map", "m": "anchored-map",
            "ag": "plain, CUDA graphs",
            "bg": "mixed, CUDA graphs", "fg": "feature-map, CUDA graphs"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="ViT-B-32,ViT-L-14", help="comma-separated open_clip names or tiny / micro")
    p.add_argument("--batch-sizes", nargs="+", default=None,
                   help="`1,8,64` for every architecture and/or `ARCH=1,4` for one (default GPU 1,8,64,128; "
                        "CPU 1,4,16 and ViT-L-14=1,4)")
    p.add_argument("--repeats", type=int, default=None, help="timed batches per variant and batch size "
                                                             "(default GPU 30, CPU 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed batches per variant after the first untimed one (GPU 3, CPU 0)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="tower dtype (default: bf16 on GPU as the service, fp32 on CPU)")
    p.add_argument("--tasks", type=int, default=8, help="K, the width of the preferences")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--members", default="1,2,4,8", help="distinct point-set members per batch ('' skips the kind)")
    p.add_argument("--member-batch", type=int, default=64, help="the batch size of the point-set rows")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="also the CUDA-graph variants (default: on CUDA)")
    p.add_argument("--time-materialise", action="store_true", help="time c too (default: one untimed call)")
    p.add_argument("--cold", default="1,4", help="member counts of the cold point-set rows ('' none)")
    add_common_args(p)
    return p


def parse_batch_sizes(specs: Optional[list[str]], defaults: dict[str, list[int]]) -> dict[str, list[int]]:
    if not specs:
        return dict(defaults)
    out: dict[str, list[int]] = {}
    for spec in specs:
        arch, _, sizes = spec.rpartition("=")
        values = [int(v) for v in sizes.split(",") if v.strip()]
        if not values or min(values) < 1:
            raise SystemExit(f"--batch-sizes {spec!r}: expected positive integers like 1,8,64 or ARCH=1,4")
        out[arch or "*"] = values
    if "*" not in out:
        out["*"] = defaults["*"]
    return out


def random_family(tower: torch.nn.Module, tasks: int, rank: int, generator: torch.Generator) -> dict[str, LowRank]:
    """A/B/G of rank r on every block's attn in_proj and out_proj (float32, as a family file)."""
    out = {}
    state = tower.state_dict()
    for name in target_names(list(state), list(TARGETS)):
        d_out, d_in = state[name].shape
        out[name] = LowRank(A=torch.randn(d_out, rank, generator=generator) / rank ** 0.5,
                            B=torch.randn(d_in, rank, generator=generator) / d_in ** 0.5,
                            G=torch.randn(tasks, rank, rank, generator=generator) * 0.02)
    return out


class Variants:
    """The forwards of one architecture, sharing one tower on the device."""

    def __init__(self, arch_name: str, tasks: int, rank: int, device: torch.device, dtype: torch.dtype, seed: int,
                 graphs: bool):
        self.arch_name = arch_name
        self.arch = resolve_architecture(arch_name)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        tower = build_tower(self.arch)
        lowrank = random_family(tower, tasks, rank, gen)
        self.model = LowRankServable(tower, lowrank, {}, device, dtype)  # moves `tower` in place
        self.graphed_model = LowRankServable(tower, lowrank, {}, device, dtype, graphs=True) if graphs else None
        self.tower = self.model.tower
        self.graphs = GraphedCalls(device) if graphs else None
        self.base = dict(self.tower.state_dict())  # references to the device weights, no copy
        # a naive server keeps the family's factors (float32) next to the base on the device
        self.lowrank = {n: f.to(device) for n, f in lowrank.items()}
        self.device, self.dtype, self.tasks = device, dtype, tasks
        self.size = image_size(self.arch)
        self.params = sum(v.numel() for v in self.base.values())
        self.adapted = len(lowrank)
        d = self.tower.output_dim
        maps = torch.eye(d) + 0.1 * torch.randn(tasks, d, d, generator=gen)
        z = torch.randn(tasks, d, 2 * d, generator=gen)
        grams = z @ z.transpose(1, 2) / (2 * d) + 0.1 * torch.eye(d)
        self.feature_maps = {g: FeatureMapServable(self.tower, maps, grams, {}, device, dtype, 1 << 30, graphs=g)
                             for g in ((False, True) if graphs else (False,))}
        towards = {k: (torch.randn(tasks, *v.shape, generator=gen) * 0.01).to(dtype) for k, v in self.base.items()
                   if v.is_floating_point()}  # as a family stores them: the zoo's dtype, here the serving one
        family = AnchoredMapFamily(dict(self.base), maps, grams, TaskTensors.dense(towards),
                                   AnchoredMapParams(dim=d, anchor=0.7), tasks,
                                   self.arch, "bench")
        self.anchored = family.servable({}, device, dtype, 1 << 34)
        self.anchored_family = family

    def inputs(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(n, 3, self.size, self.size, generator=gen).to(self.device, self.dtype)
        prefs = torch.distributions.Dirichlet(torch.ones(self.tasks)).sample((n,))  # on the host, as the engine has them
        return images, prefs

    @torch.inference_mode()
    def plain(self, images: torch.Tensor, prefs: torch.Tensor) -> torch.Tensor:
        return self.tower(images).float()

    @torch.inference_mode()
    def plain_graphed(self, images: torch.Tensor, prefs: torch.Tensor) -> torch.Tensor:
        return self.graphs("plain", self.tower, images).float()

    @torch.inference_mode()
    def mixed(self, images: torch.Tensor, prefs: torch.Tensor, graphed: bool = False) -> torch.Tensor:
        model = self.graphed_model if graphed else self.model
        return model.features(images, prefs)  # its plan: the preferences, on the host

    @torch.inference_mode()
    def feature_map(self, images: torch.Tensor, prefs: torch.Tensor, graphed: bool = False) -> torch.Tensor:
        model = self.feature_maps[graphed]
        model.cache.entries.clear()  # every call solves every preference: the worst case of the cache
        model.cache.bytes = 0
        return model.features(images, model.plan([canonical_weights(row) for row in prefs.tolist()]))

    @torch.inference_mode()
    def anchored_map(self, images: torch.Tensor, prefs: torch.Tensor) -> torch.Tensor:
        prefs = prefs.clone()
        for i in range(0, len(prefs), 4):  # every fourth image: the vertex of task 0, or 0.85 on task 1
            prefs[i] = torch.eye(self.tasks)[0] if i % 8 == 0 else torch.full((self.tasks,), 0.15 / (self.tasks - 1))
            if i % 8:
                prefs[i, 1] = 0.85
        model = self.anchored
        model.cache.entries.clear()  # as f: every call solves every preference
        model.cache.bytes = 0
        return model.features(images, model.plan(self.anchored_family.resolve(prefs)))

    def materialized(self, pref: torch.Tensor) -> dict[str, torch.Tensor]:
        # Family.iter_materialized's math, on the device
        state = dict(self.base)
        for name, f in self.lowrank.items():
            w = self.base[name]
            state[name] = (w.float() + f.delta(pref)).to(w.dtype)
        return state

    @torch.inference_mode()
    def materialise(self, images: torch.Tensor, prefs: torch.Tensor) -> torch.Tensor:
        distinct, inverse = torch.unique(prefs, dim=0, return_inverse=True)
        out = torch.empty(len(images), self.tower.output_dim, device=self.device)
        for j, pref in enumerate(distinct.to(self.device)):
            rows = (inverse == j).nonzero().squeeze(1).to(self.device)
            out[rows] = functional_call(self.tower, self.materialized(pref), (images[rows],)).float()
        return out


def random_members(tower: torch.nn.Module, tasks: int, count: int, generator: torch.Generator) -> Members:
    """A point-set family of `count` members (task-level coefficients, distinct Dirichlet(1)
    preferences) over theta0 = the tower's weights and random task vectors (float32, as stored)."""
    pretrained = {k: v.detach().float().cpu().clone() for k, v in tower.state_dict().items()}
    vectors = {k: torch.randn(tasks, *v.shape, generator=generator) * 0.01 for k, v in pretrained.items()
               if v.is_floating_point()}
    prefs = torch.distributions.Dirichlet(torch.ones(tasks)).sample((count,))
    members = [Member(preference=p.tolist(), coefficients=(0.3 * tasks * p).tolist()) for p in prefs]
    return Members(pretrained, TaskTensors.dense(vectors), PointSetParams(members=members), {},
                   [f"t{i}" for i in range(tasks)])


def bench_point_set(v: "Variants", args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                    counts: list[int], cold_counts: list[int], gen: torch.Generator) -> dict[str, Any]:
    """a, b and the point-set variants w<d> (warm), c<d> (cold) and, with graphs, ag, bg and wg<d>,
    interleaved, at one batch size."""
    n, most = args.member_batch, max(counts)
    members = random_members(v.tower, v.tasks, 2 * most, gen)  # sets A (warm) and B (cold's other half)
    tower_bytes = sum(t.numel() * (t.element_size() if not t.is_floating_point() else
                                   torch.empty((), dtype=dtype).element_size()) for t in members.pretrained.values())
    graph_modes = (False, True) if v.graphs is not None else (False,)
    family = PointSetFamily(members, v.arch, "bench")
    warm = {g: family.servable({}, device, dtype, most * tower_bytes, graphs=g) for g in graph_modes}
    images, prefs = v.inputs(n, gen)

    def batch_prefs(first: int, d: int) -> list[int]:
        return [first + i % d for i in range(n)]  # each image's member: its variant

    def member_features(model: VariantServable, variants: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model.features(images, model.plan(variants))

    fns = {"a": lambda: v.plain(images, prefs), "b": lambda: v.mixed(images, prefs)}
    if v.graphs is not None:
        fns |= {"ag": lambda: v.plain_graphed(images, prefs), "bg": lambda: v.mixed(images, prefs, graphed=True)}
    colds: dict[int, VariantServable] = {}
    for d in counts:
        for g in graph_modes:
            fns[f"w{'g' if g else ''}{d}"] = (lambda m, p: lambda: member_features(m, p))(warm[g], batch_prefs(0, d))
    for d in cold_counts:
        cold = colds[d] = VariantServable(family, {}, device, dtype, d * tower_bytes)
        sets = [batch_prefs(0, d), batch_prefs(most, d)]
        # alternate between two disjoint sets of d members through room for d: every member misses
        fns[f"c{d}"] = (lambda model, sets, d: lambda: member_features(model, sets[model.materialized // d % 2]))(
            cold, sets, d)
    for name, fn in fns.items():  # fill the warm caches, and a first call of everything
        fn()
    before = {d: cold.materialized for d, cold in colds.items()}
    samples = run_interleaved(fns, args.repeats, args.warmup, device)
    # every cold call materialised all its d members, no warm call any
    misses = {d: (cold.materialized - before[d]) / (args.repeats + args.warmup) for d, cold in colds.items()}
    if any(m != d for d, m in misses.items()) or any(w.materialized != most for w in warm.values()):
        raise RuntimeError(f"the cache did not behave as benchmarked: misses per cold call {misses}, "
                           f"warm materialisations {[w.materialized for w in warm.values()]}")
    row: dict[str, Any] = {"batch": n, "members": counts, "cold_members": cold_counts, "cached_towers_warm": most,
                           "misses_per_cold_call": misses}
    for key, smp in samples.items():
        stats = summarize(smp.seconds)
        row[key] = {"seconds": smp.seconds, "stats": stats, "images_per_s": n / stats["p50_s"],
                    "p50_ms": stats["p50_s"] * 1e3}
    for key in samples:
        plain = "ag" if key.startswith(("wg", "bg")) else "a"  # graphed against graphed
        if key != plain:
            row[f"{key}_over_{plain}"] = row[key]["images_per_s"] / row[plain]["images_per_s"]
            row[f"{key}_over_{plain}_per_round"] = round_ratios(samples[key].seconds, samples[plain].seconds)
    print(f"  {v.arch_name} point-set batch {n}: " + ", ".join(
        f"{k}/{p} {spread_text(row[f'{k}_over_{p}_per_round'])}" for k in fns
        for p in ("a", "ag") if f"{k}_over_{p}_per_round" in row), flush=True)
    return row


def bench_arch(arch_name: str, sizes: list[int], args: argparse.Namespace, device: torch.device,
               dtype: torch.dtype) -> dict[str, Any]:
    v = Variants(arch_name, args.tasks, args.rank, device, dtype, args.seed, args.graphs)
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    for n in sizes:
        images, prefs = v.inputs(n, gen)
        fns = {"a": lambda: v.plain(images, prefs), "b": lambda: v.mixed(images, prefs),
               "f": lambda: v.feature_map(images, prefs), "m": lambda: v.anchored_map(images, prefs)}
        if args.graphs:
            fns |= {"ag": lambda: v.plain_graphed(images, prefs), "bg": lambda: v.mixed(images, prefs, graphed=True),
                    "fg": lambda: v.feature_map(images, prefs, graphed=True)}
        if args.time_materialise:
            fns["c"] = lambda: v.materialise(images, prefs)
        fns["a"]()  # one untimed call of each variant before --warmup more: b and c are also compared
        b_out, c_out = fns["b"](), v.materialise(images, prefs)
        agreement = ((b_out - c_out).abs().max() / c_out.abs().max().clamp(min=1e-12)).item()
        graphed_agreement = {}
        for x in ("a", "b", "f"):
            if f"{x}g" in fns:  # graphs replay the same computation: equal to rounding
                eager, replayed = fns[x](), fns[f"{x}g"]().clone()
                graphed_agreement[x] = ((replayed - eager).abs().max() / eager.abs().max().clamp(min=1e-12)).item()
        samples = run_interleaved(fns, args.repeats, args.warmup, device)
        row: dict[str, Any] = {"batch": n, "b_vs_c_max_rel_diff": agreement, "graphed_vs_eager_max_rel_diff":
                               graphed_agreement, "distinct_preferences": int(torch.unique(prefs, dim=0).shape[0])}
        for key, smp in samples.items():
            stats = summarize(smp.seconds)
            row[key] = {"variant": VARIANTS[key], "seconds": smp.seconds, "stats": stats,
                        "images_per_s": n / stats["p50_s"], "images_per_s_mean": n / stats["mean_s"],
                        "p50_ms": stats["p50_s"] * 1e3, "p99_ms": stats["p99_s"] * 1e3}
        # throughput ratios (> 1: faster than a); from the p50 batch latency, robust to a noisy neighbour
        pairs = [("b", "a"), ("c", "a"), ("b", "c"), ("f", "a"), ("m", "a"), ("bg", "ag"), ("fg", "ag"), ("ag", "a"),
                 ("bg", "b")]
        for x, y in pairs:
            if x in row and y in row:
                row[f"{x}_over_{y}"] = row[x]["images_per_s"] / row[y]["images_per_s"]
                row[f"{x}_over_{y}_mean"] = row[x]["images_per_s_mean"] / row[y]["images_per_s_mean"]
                row[f"{x}_over_{y}_per_round"] = round_ratios(samples[x].seconds, samples[y].seconds)
        rows.append(row)
        print(f"  {arch_name} batch {n}: " + ", ".join(f"{x}/{y} {spread_text(row[f'{x}_over_{y}_per_round'])}"
                                                      for x, y in pairs if f"{x}_over_{y}_per_round" in row), flush=True)
    counts = [int(c) for c in args.members.split(",") if c.strip()]
    cold_counts = [int(c) for c in args.cold.split(",") if c.strip()]
    point_set = bench_point_set(v, args, device, dtype, counts, cold_counts, gen) if counts else None
    out = {"arch_name": arch_name, "architecture": v.arch, "image_size": v.size, "params": v.params,
           "adapted_tensors": v.adapted, "batches": rows, "point_set": point_set}
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_benchmark(build_parser(), argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    threads = torch.get_num_threads()
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    batch_sizes = parse_batch_sizes(args.batch_sizes, defaults["batch_sizes"])
    for key in ("repeats", "warmup", "dtype"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.graphs is None:
        args.graphs = device.type == "cuda"
    elif args.graphs and device.type != "cuda":
        raise SystemExit("--graphs: CUDA graphs need a CUDA device")
    dtype = getattr(torch, DTYPES[args.dtype])
    if device.type == "cuda" and dtype == torch.float32:
        # fp32 is the correctness check: TF32 (cuDNN's default for the patch convolution) would round
        # every input to 10 bits of mantissa and measure that instead of the merge
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    plan = {a: batch_sizes.get(a, batch_sizes["*"]) for a in archs}

    results = []
    for a in archs:
        results.append(bench_arch(a, plan[a], args, device, dtype))
        if device.type == "cuda":  # the architecture's towers and graphs are garbage now
            torch.cuda.empty_cache()

    gpu = device.type == "cuda"
    modes = [("eager", "b", "a", "w")] + ([("graphs", "bg", "ag", "wg")] if args.graphs else [])
    checks = [{"arch": r["arch_name"], "batch": b["batch"], "mode": mode, "ratio": b[f"{x}_over_{y}"],
               "met": b[f"{x}_over_{y}"] >= 0.9}
              for r in results for b in r["batches"] if b["batch"] >= 64 for mode, x, y, _ in modes]
    target = {"mixed_over_plain_min": 0.9, "at_batch_at_least": 64, "applies": gpu,
              "met": (all(c["met"] for c in checks) if checks else None) if gpu else None, "checks": checks}
    ps_checks = [{"arch": r["arch_name"], "members": d, "mode": mode,
                  "warm_over_plain": r["point_set"][f"{w}{d}_over_{y}"], "met": r["point_set"][f"{w}{d}_over_{y}"] >= 0.85}
                 for r in results if r["point_set"] for d in r["point_set"]["members"] if d <= 4
                 for mode, _, y, w in modes]
    target["point_set"] = {"warm_over_plain_min": 0.85, "members_at_most": 4, "batch": args.member_batch,
                           "applies": gpu and args.member_batch >= 64,
                           "met": (all(c["met"] for c in ps_checks) if ps_checks else None) if gpu else None,
                           "checks": ps_checks}
    payload = {
        "benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
        "config": {"argv": args.argv, "threads": threads, "archs": archs, "batch_sizes": plan,
                   "repeats": args.repeats, "warmup": args.warmup, "dtype": args.dtype, "device": str(device),
                   "tasks": args.tasks, "rank": args.rank, "seed": args.seed, "graphs": args.graphs,
                   "targets": list(TARGETS), "defaults_used": "gpu" if gpu else "cpu",
                   "preferences": "one Dirichlet(1) preference per image",
                   "interleaving": "every variant of a batch size in an order rotated every repeat; the point-set "
                                   "rows: a, b, w<d>, c<d> (and ag, bg, wg<d>) in one rotated order",
                   "members": args.members, "cold": args.cold, "member_batch": args.member_batch},
        "variants": VARIANTS, "results": results, "target": target,
    }
    path = write_result(args.out_dir, NAME, device, payload)
    payload["path"] = str(path)

    shown = [k for k in ("a", "b", "f", "m", "ag", "bg", "fg", "c") if any(k in b for r in results for b in r["batches"])]
    ratios = [(x, y) for x, y in (("b", "a"), ("f", "a"), ("m", "a"), ("bg", "ag"), ("fg", "ag"), ("ag", "a"))
              if f"{x}_over_{y}_per_round" in results[0]["batches"][0]]
    table = [[r["arch_name"], b["batch"], *(b[k]["images_per_s"] for k in shown),
              *(spread_text(b[f"{x}_over_{y}_per_round"]) for x, y in ratios)] for r in results for b in r["batches"]]
    print(f"\n{device} ({payload['machine']['cuda_device'] or payload['machine']['cpu_model']}), {args.dtype}, "
          f"K={args.tasks}, rank {args.rank}, {args.repeats} repeats after 1 + {args.warmup} warm-up; "
          f"{threads} CPU thread(s); " + ", ".join(f"{k} {VARIANTS[k]}" for k in shown) + "\n")
    print(markdown_table(["arch", "batch", *(f"{k} img/s" for k in shown), *(f"{x}/{y} [IQR]" for x, y in ratios)],
                         table))
    ps = [[r["arch_name"], r["point_set"]["batch"], key, r["point_set"][key]["images_per_s"], r["point_set"][key]["p50_ms"],
           next((f"{spread_text(r['point_set'][f'{key}_over_{y}_per_round'])} (/{y})" for y in ("a", "ag")
                 if f"{key}_over_{y}_per_round" in r["point_set"]), "")]
          for r in results if r["point_set"] for key in r["point_set"] if isinstance(r["point_set"][key], dict)
          and "images_per_s" in r["point_set"][key]]
    if ps:
        print("\npoint-set: w<d> warm, c<d> cold, wg<d> warm with CUDA graphs; d distinct members per batch\n")
        print(markdown_table(["arch", "batch", "variant", "img/s", "p50 ms", "over plain [IQR]"], ps))
    print("\nratios: median throughput ratio over the interleaved rounds [its interquartile range]")
    if gpu:
        for mode, x, y, w in modes:
            mine = [c for c in checks if c["mode"] == mode]
            print(f"target {x}/{y} >= 0.9 at batch >= 64 ({mode}): "
                  f"{'met' if all(c['met'] for c in mine) else 'NOT met' if mine else 'no such batch'}")
            mine = [c for c in ps_checks if c["mode"] == mode]
            print(f"target point-set {w}<d>/{y} >= 0.85 with <= 4 members ({mode}): "
                  f"{'met' if all(c['met'] for c in mine) else 'NOT met' if mine else 'n/a'}")
    else:
        print("\ntargets (mixed >= 0.9 x plain at batch >= 64; point-set warm >= 0.85 x plain) apply on a GPU only")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
