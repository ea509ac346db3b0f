"""What the matrix merges (TSV-M, Iso-C, Iso-CTS, WUDI) share: which parameters are linear
layers, and the rest. A linear layer's weight (a 2-D tensor that is not an embedding: attention's
in_proj and out_proj, the MLP's c_fc and c_proj, the output projection `proj`) gets the method's
matrix treatment; every other tensor (norms, biases, the patch convolution, the class and
positional embeddings) falls back to task arithmetic's mean, as the papers do."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..pool import TaskVector
from ..progress import progress_bar

EMBEDDINGS = ("positional_embedding", "class_embedding")
MatrixMerge = Callable[[list[torch.Tensor]], torch.Tensor]  # the tasks' deltas of one weight -> merged delta

FALLBACK_HELP = ("Linear layers' weights get the matrix treatment; norms, biases, the patch convolution and the "
                 "embeddings fall back to the mean of the task vectors.")


def is_linear(name: str, tensor: torch.Tensor) -> bool:
    return tensor.ndim == 2 and not any(e in name for e in EMBEDDINGS)


def merge_layers(vectors: Mapping[str, Mapping[str, torch.Tensor]], merge_matrix: MatrixMerge, desc: str = "merge",
                 progress: bool = False) -> TaskVector:
    """One merged task vector, tensor by tensor: `merge_matrix` on linear weights, the mean elsewhere.
    Each tensor is read once from each vector, so streamed vectors (ModelPool.streamed_task_vectors)
    keep K tensors in memory, not K towers."""
    tasks = list(vectors)
    merged: TaskVector = {}
    for name in progress_bar(list(vectors[tasks[0]]), desc=desc, unit="tensor", disable=not progress):
        deltas = [vectors[t][name] for t in tasks]
        merged[name] = merge_matrix(deltas) if is_linear(name, deltas[0]) else torch.stack(deltas).mean(0)
    return merged


def polar(x: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (or rows): P Q^T of x = P S Q^T."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh
