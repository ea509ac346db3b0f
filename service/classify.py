"""Request parameters -> validated values, and logits -> top-k labels (plain, no HTTP)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import InvalidParameter
from .schemas import ImageResult, Label

MAX_TOP_K = 100


def select_tasks(requested: Optional[Sequence[str]], tasks: Sequence[str]) -> list[str]:
    """`task` may repeat or be comma-separated; none means all tasks. Unknown names are an error."""
    names = [n.strip() for item in requested or () for n in item.split(",") if n.strip()]
    if not names:
        return list(tasks)
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise InvalidParameter(f"unknown task(s) {', '.join(map(repr, unknown))}; tasks are: {', '.join(tasks)}")
    return list(dict.fromkeys(names))


def top_k(logits: torch.Tensor, classes: Sequence[str], k: int) -> list[list[Label]]:
    """[N, C] logits -> per image the k most probable classes (k is capped at C)."""
    probs = torch.softmax(logits.float(), dim=-1)
    values, indices = probs.topk(min(k, len(classes)), dim=-1)
    return [[Label(label=classes[i], index=i, probability=p) for p, i in zip(v.tolist(), ix.tolist())]
            for v, ix in zip(values, indices)]


def image_results(logits: dict[str, torch.Tensor], tasks: Sequence[str], classes: dict[str, list[str]],
                  k: int, filenames: Sequence[Optional[str]]) -> list[ImageResult]:
    per_task = {t: top_k(logits[t], classes[t], k) for t in tasks}
    return [ImageResult(index=i, filename=name, predictions={t: per_task[t][i] for t in tasks})
            for i, name in enumerate(filenames)]
