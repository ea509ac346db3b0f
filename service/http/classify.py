"""Request parameters -> validated values, and logits -> the classification answer (plain, no HTTP,
no torch: a front-end process holds neither)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from service.errors import InvalidParameter

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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] logits, in float64 (then rounded: JSON shows float32's digits)."""
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, classes: Sequence[str], k: int) -> list[list[dict]]:
    """[N, C] logits -> per image the k most probable classes (k is capped at C), most probable first."""
    probs = softmax(logits)
    k = min(k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"label": classes[i], "index": int(i), "probability": float(np.float32(row[i]))} for i in idx]
            for row, idx in zip(probs, order)]


def classification(family_id: str, preference: str, weights: dict[str, float], logits: dict[str, np.ndarray],
                   tasks: Sequence[str], classes: dict[str, list[str]], k: int,
                   filenames: Sequence[Optional[str]]) -> dict:
    """The answer of POST /classify (schemas.ClassifyResponse)."""
    per_task = {t: top_k(logits[t], classes[t], k) for t in tasks}
    return {"family_id": family_id, "preference": preference, "weights": weights,
            "results": [{"index": i, "filename": name, "predictions": {t: per_task[t][i] for t in tasks}}
                        for i, name in enumerate(filenames)]}
