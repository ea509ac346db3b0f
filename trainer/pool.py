"""Model pool (FusionBench's term): the pretrained tower, task vectors and heads of a zoo.

Task vectors are computed once and kept; every method reads them from here.
"""
from __future__ import annotations

from functools import cached_property
from typing import Iterator, Mapping

import torch
from open_clip.transformer import VisionTransformer

from models_store.checkpoint import StateDict
from models_store.tower import build_tower, float_keys
from models_store.zoo import Head, Zoo

TaskVector = dict[str, torch.Tensor]


def task_vector(pretrained: StateDict, finetuned: StateDict, keys: list[str]) -> TaskVector:
    """tau = finetuned - pretrained, over the merged parameters."""
    return {k: finetuned[k].float() - pretrained[k].float() for k in keys}


def add_scaled(pretrained: StateDict, vectors: list[TaskVector], scales: list[float]) -> StateDict:
    """theta0 + sum_i scale_i * vector_i (tensors not in the vectors are copied from theta0)."""
    out = dict(pretrained)
    for k in vectors[0]:
        acc = pretrained[k].float().clone()
        for v, s in zip(vectors, scales):
            acc.add_(v[k], alpha=s)
        out[k] = acc.to(pretrained[k].dtype)
    return out


class StreamedTaskVector(Mapping[str, torch.Tensor]):
    """tau_t[P] = theta_t[P] - theta0[P], read from the zoo when asked for and never kept: a merge that
    goes tensor by tensor holds K tensors at a time instead of K towers."""

    def __init__(self, pool: "ModelPool", task: str):
        self.pool, self.task = pool, task

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.pool.zoo.finetuned_tensor(self.task, key).float() - self.pool.pretrained[key].float()

    def __iter__(self) -> Iterator[str]:
        return iter(self.pool.keys)

    def __len__(self) -> int:
        return len(self.pool.keys)


class ModelPool:
    def __init__(self, zoo: Zoo):
        self.zoo = zoo
        self.tasks = zoo.tasks
        self.architecture = zoo.manifest.architecture

    @cached_property
    def pretrained(self) -> StateDict:
        return self.zoo.pretrained()

    @cached_property
    def keys(self) -> list[str]:
        return float_keys(self.pretrained)

    @cached_property
    def task_vectors(self) -> dict[str, TaskVector]:
        return {t: task_vector(self.pretrained, self.zoo.finetuned(t), self.keys) for t in self.tasks}

    def streamed_task_vectors(self) -> "dict[str, Mapping[str, torch.Tensor]]":
        """The task vectors as kept ones if they are, else read tensor by tensor (StreamedTaskVector)."""
        if "task_vectors" in self.__dict__:
            return dict(self.task_vectors)
        return {t: StreamedTaskVector(self, t) for t in self.tasks}

    def release(self) -> None:
        """Forget the tensors kept so far (the pretrained tower, the task vectors): a learner done with them."""
        for name in ("pretrained", "keys", "task_vectors"):
            self.__dict__.pop(name, None)

    @property
    def heads(self) -> dict[str, Head]:
        return self.zoo.heads

    def tower(self) -> VisionTransformer:
        return build_tower(self.architecture)
