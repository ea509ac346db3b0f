"""POST /select: the preference for images of a task the family was not trained on (Pareto Merging,
section 4.3, as `pmerge select` without a head): every candidate preference over every image, in
the engine's mixed batches, and the lowest mean prediction entropy over the family's heads. Plain
numpy: a front-end process runs it too."""
from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np

from models_store.simplex import selection_candidates

from service.errors import InvalidParameter
from service.engine.families import FamilyView
from service.runtime.base import Runtime

MAX_SELECT_IMAGES = 32  # images per request: each is classified under every candidate
MAX_SELECT_SAMPLES = 64  # Dirichlet draws beside the equal preference and the vertices
MAX_SELECT_EVALUATIONS = 1024  # candidates x images: the forward passes one request may cost


def mean_entropy(logits: np.ndarray) -> float:
    """Mean Shannon entropy (nats) of the row-wise softmax of [N, C] logits, in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return float(-(np.exp(logp) * logp).sum(axis=1).mean())


async def select_preference(runtime: Runtime, family: FamilyView, files: Sequence[tuple[str, bytes]],
                            samples: int, seed: int) -> dict:
    """The answer of POST /select (schemas.SelectResponse)."""
    candidates = selection_candidates(family.tasks, samples, seed)
    if len(candidates) * len(files) > MAX_SELECT_EVALUATIONS:
        raise InvalidParameter(f"{len(candidates)} candidate preferences (samples={samples} beside the equal one and "
                               f"the {len(family.tasks)} vertices) x {len(files)} images is over "
                               f"{MAX_SELECT_EVALUATIONS} evaluations: lower samples or send fewer images")
    # a few candidates at a time: each is one classify of every image, and together they fill a batch;
    # the images are decoded once, and their batches are background work (a /classify goes first)
    at_once = max(1, runtime.settings.engine.max_batch // len(files))
    scores: list[float] = []
    async with runtime.prepared(family, files) as images:
        for start in range(0, len(candidates), at_once):
            group = candidates[start:start + at_once]
            answers = await asyncio.gather(*(runtime.run(family, images, np.asarray(p.weights, dtype=np.float32),
                                                         background=True) for p in group))
            scores += [float(np.mean([mean_entropy(logits[t]) for t in family.tasks])) for logits in answers]
    best = int(np.argmin(scores))  # the first of equals: the order tried
    trial = lambda p, e: {"preference": p.canonical, "weights": p.as_dict(), "entropy": e}  # noqa: E731
    return {"family_id": family.family_id, "tasks": family.tasks, "images": len(files), "samples": samples,
            "seed": seed, "selected": trial(candidates[best], scores[best]),
            "trials": [trial(p, e) for p, e in zip(candidates, scores)]}
