"""Rewards of inference paths: at every depth the block comes from theta(lambda), from a fine-tuned
model, or is skipped; the stem, ln_post and proj come from theta(lambda).

reward(lambda, path) = sum_k lambda_k acc_k(path on lambda's merge) - penalty x blocks run,

on a fixed labelled validation subset (the search part). The search's best paths are then scored
again on the validation images it never saw (the confirmation part), so a path that only fits the
search part's images is not chosen. The tokens after every prefix of a path are cached (least
recently used out, within a byte budget), so a path that shares its first d blocks with one seen
runs only the rest; the accuracies of every (member, path) evaluated are kept, so no path is
evaluated twice."""
from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path as PathLike
from typing import Optional, Sequence

import torch
from open_clip.transformer import VisionTransformer

from models_store.atomic import write_text
from models_store.kinds.point_set import FINETUNED, MERGE, SKIP
from models_store.tower import task_arithmetic
from models_store.tower import embed, pool_project

from ...data import TaskData
from ...evaluate import Evaluator, StageTimer
from ...objective import autocast
from ...pool import ModelPool

Path = tuple[int, ...]  # one source index per block


def by_stage(timer: StageTimer) -> dict[str, float]:
    """An HM3 run's seconds by stage, every stage named. The timer also counts `paths` (distinct
    (member, path) evaluated), `blocks_run` (block forwards computed) and `blocks_needed` (what the
    paths would need without the prefix cache)."""
    return {name: round(timer.seconds.get(name, 0.0), 3) for name in ("merge", "evaluate", "policy")}


def sources(tasks: Sequence[str], allow_skip: bool) -> list[str]:
    """The block sources, in the policy's order: merge, finetuned:<task>..., skip."""
    return [MERGE, *(f"{FINETUNED}{t}" for t in tasks), *([SKIP] if allow_skip else [])]


def validation_parts(val: dict[str, TaskData], search_images: int,
                     seed: int) -> tuple[dict[str, TaskData], dict[str, TaskData]]:
    """Each task's validation data split in two fixed, seeded, disjoint parts: the search part (at
    most `search_images`, at most half) on which every path is scored, and the rest, on which the
    search's finalists are confirmed."""
    search: dict[str, TaskData] = {}
    confirm: dict[str, TaskData] = {}
    for i, (t, d) in enumerate(val.items()):
        n = len(d.labels)
        if n < 2:
            raise ValueError(f"task {t!r} has {n} validation image(s); HM3 needs at least 2 (a search and a "
                             f"confirmation part): raise --val-fraction or give --val {t}=SPEC")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + i))
        cut = min(search_images, n // 2)
        for part, pick in ((search, order[:cut]), (confirm, order[cut:])):
            pick = pick.sort().values
            part[t] = TaskData(d.images[pick], d.labels[pick], d.classes)
    return search, confirm


@dataclass
class Accuracies:
    per_task: list[float]
    blocks: int  # blocks the path runs
    correct: Optional[list[torch.Tensor]] = None  # per task, which images it classified right (not saved)

    def reward(self, pref: Sequence[float], penalty: float) -> float:
        return self.objective(pref) - penalty * self.blocks

    def objective(self, pref: Sequence[float]) -> float:
        return float(sum(p * a for p, a in zip(pref, self.per_task)))

    def gain_over(self, start: "Accuracies", pref: Sequence[float]) -> tuple[float, float]:
        """The objective's gain over `start` on the same images, and its standard error from the
        paired per-image differences."""
        if self.correct is None or start.correct is None:
            raise ValueError("a gain needs both paths' per-image results, which are not saved")
        gain, variance = 0.0, 0.0
        for p, mine, theirs in zip(pref, self.correct, start.correct):
            d = mine.float() - theirs.float()
            gain += p * float(d.mean())
            variance += p * p * float(d.var(unbiased=False)) / len(d)
        return gain, math.sqrt(variance)


class PathEvaluator:
    """Accuracies of (member, path) on the validation subset; members are given by their merge
    coefficients alpha lambda over the merge vectors."""

    def __init__(self, pool: ModelPool, merge_vectors: dict[str, dict[str, torch.Tensor]], coefficients: list[list[float]],
                 val: dict[str, TaskData], allow_skip: bool, device: torch.device, batch_size: int = 256,
                 cache_bytes: int = 1 << 30):
        self.tasks, self.device, self.batch_size, self.cache_bytes = pool.tasks, device, batch_size, cache_bytes
        self.sources = sources(pool.tasks, allow_skip)
        self.coefficients = coefficients
        self.timer = StageTimer(device)
        # the heads and the labels of the one evaluator; the images go through the paths' blocks here
        self.scorer = Evaluator(pool.architecture, pool.heads, val, device, batch_size, self.timer)
        self.theta0 = {k: v.to(device) for k, v in pool.pretrained.items()}
        self.vectors = {k: torch.stack([merge_vectors[t][k] for t in pool.tasks]).to(device) for k in pool.keys}
        self.merged_tower = pool.tower().to(device).eval()
        self.finetuned = [self._tower(pool, {k: self.theta0[k] + pool.task_vectors[t][k].to(device) for k in pool.keys})
                          for t in pool.tasks]
        self.depth = len(self.merged_tower.transformer.resblocks)
        self.images = torch.cat([val[t].images for t in pool.tasks]).to(device)
        self.labels = [val[t].labels.to(device) for t in pool.tasks]
        self.loaded = {"member": -1}  # whose merge the merged tower holds (shared with `on`'s evaluators)
        self.tokens: OrderedDict[tuple[int, Path], torch.Tensor] = OrderedDict()
        self.cached_bytes = 0
        self.results: dict[tuple[int, Path], Accuracies] = {}

    def _tower(self, pool: ModelPool, weights: dict[str, torch.Tensor]) -> VisionTransformer:
        tower = pool.tower().to(self.device).eval()
        with torch.no_grad():
            for name, target in tower.state_dict().items():
                target.copy_(weights.get(name, self.theta0[name]))
        return tower

    def _load_member(self, member: int) -> None:
        if member == self.loaded["member"]:
            return
        with self.timer.stage("merge"):
            lam = torch.tensor(self.coefficients[member], device=self.device)
            with torch.no_grad():
                for name, target in self.merged_tower.state_dict().items():
                    target.copy_(task_arithmetic(self.theta0[name], lam, self.vectors[name]) if name in self.vectors
                                 else self.theta0[name])
        self.loaded["member"] = member

    def _block(self, source: int, depth: int) -> torch.nn.Module | None:
        name = self.sources[source]
        if name == SKIP:
            return None
        tower = self.merged_tower if name == MERGE else self.finetuned[source - 1]
        return tower.transformer.resblocks[depth]

    def _remember(self, key: tuple[int, Path], x: torch.Tensor) -> None:
        size = x.numel() * x.element_size()
        if size > self.cache_bytes:
            return
        while self.cached_bytes + size > self.cache_bytes:
            _, old = self.tokens.popitem(last=False)
            self.cached_bytes -= old.numel() * old.element_size()
        self.tokens[key] = x
        self.cached_bytes += size

    def _in_chunks(self, fn, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def __call__(self, member: int, path: Path) -> Accuracies:
        """The per-task accuracy of (member, path) on this evaluator's images, evaluated once."""
        key = (member, tuple(path))
        if key in self.results:
            return self.results[key]
        self._load_member(member)
        with self.timer.stage("evaluate"):
            correct = [c.cpu() for c in self.outcomes(member, key[1])]
        blocks = sum(self.sources[s] != SKIP for s in path)
        self.timer.count("paths")
        self.timer.count("blocks_needed", blocks)
        self.results[key] = Accuracies([float(c.float().mean()) for c in correct], blocks, correct)
        return self.results[key]

    @torch.inference_mode()
    def outcomes(self, member: int, path: Path) -> list[torch.Tensor]:
        """The device part: per task, which images (member, path) classifies right, [n_t] bool each.
        The member's merge must be loaded (`_load_member`)."""
        done = next(d for d in range(len(path), -1, -1) if d == 0 or (member, path[:d]) in self.tokens)
        prefix = (member, path[:done])
        if prefix in self.tokens:
            self.tokens.move_to_end(prefix)
            x = self.tokens[prefix]
        else:  # done == 0 and the stem's tokens are not cached
            with autocast(self.device):
                x = self._in_chunks(lambda im: embed(self.merged_tower, im), self.images)
            self._remember(prefix, x)
        for d in range(done, self.depth):
            block = self._block(path[d], d)
            if block is not None:
                with autocast(self.device):
                    x = self._in_chunks(block, x)
                self.timer.count("blocks_run")
            if d + 1 < self.depth:  # the whole path's tokens are never asked for again
                self._remember((member, path[:d + 1]), x)
        with autocast(self.device):
            features = pool_project(self.merged_tower, x).float()
        correct, offset = [], 0
        for t, y in zip(self.tasks, self.labels):
            correct.append(self.scorer.outcomes(t, features[offset:offset + len(y)], y)[0])
            offset += len(y)
        return correct

    def seen(self, member: int) -> dict[Path, Accuracies]:
        return {p: a for (m, p), a in self.results.items() if m == member}

    def on(self, val: dict[str, TaskData]) -> "PathEvaluator":
        """An evaluator of the same members and towers on other images, with its own results and
        token cache (and the same stage timings)."""
        other = copy.copy(self)
        other.images = torch.cat([val[t].images for t in self.tasks]).to(self.device)
        other.labels = [val[t].labels.to(self.device) for t in self.tasks]
        other.tokens, other.cached_bytes, other.results = OrderedDict(), 0, {}
        return other


def save_results(evaluator: PathEvaluator, file: PathLike) -> None:
    """Every (member, path) evaluated so far, atomically: a killed run resumes from them."""
    entries = [{"member": m, "path": list(p), "accuracy": a.per_task, "blocks": a.blocks}
               for (m, p), a in evaluator.results.items()]
    file.parent.mkdir(parents=True, exist_ok=True)
    write_text(file, json.dumps({"sources": evaluator.sources, "paths": entries}))


def load_results(evaluator: PathEvaluator, file: PathLike) -> int:
    """The saved evaluations of an earlier run of the same family; how many."""
    if not file.is_file():
        return 0
    saved = json.loads(file.read_text())
    if saved["sources"] != evaluator.sources:
        raise ValueError(f"{file} was written with block sources {saved['sources']}, not {evaluator.sources}")
    for e in saved["paths"]:
        evaluator.results[(e["member"], tuple(e["path"]))] = Accuracies(e["accuracy"], e["blocks"])
    return len(saved["paths"])
