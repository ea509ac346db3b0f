"""Task pool (FusionBench's term): each task's labeled test split, and the unlabeled images that
test-time methods (AdaMerging, Pareto Merging) adapt on. By default those are the tasks' test
images without labels (the protocol of AdaMerging and of the Pareto Merging paper); `unlabeled`
overrides them per task with any dataset spec."""
from __future__ import annotations

from functools import cached_property
from typing import Optional

import torch

from models_store.preprocess import Preprocess
from models_store.zoo import TaskInfo, Zoo

from .data import TaskData, load_dataset


class TaskPool:
    def __init__(self, zoo: Zoo, test_limit: Optional[int] = None, unlabeled: Optional[dict[str, str]] = None,
                 unlabeled_limit: Optional[int] = None, data: Optional[dict[str, str]] = None):
        """`data` overrides the dataset specs the zoo records (task -> spec)."""
        self.zoo = zoo
        self.data = data or {}
        self.test_limit = test_limit
        self.unlabeled_specs = unlabeled or {}
        self.unlabeled_limit = unlabeled_limit
        for flag, given in (("--unlabeled", self.unlabeled_specs), ("--data", self.data)):
            unknown = set(given) - set(zoo.tasks)
            if unknown:
                raise ValueError(f"{flag} names unknown tasks {sorted(unknown)}; tasks are {zoo.tasks}")

    def spec(self, task: str) -> str:
        spec = self.data.get(task) or self.zoo.task(task).data
        if spec is None:
            raise ValueError(f"zoo task {task!r} records no dataset spec: pass --data {task}=SPEC (eval), "
                             f"--unlabeled {task}=SPEC (train, merge), or import the zoo with --data {task}=SPEC")
        return spec

    @cached_property
    def test(self) -> dict[str, TaskData]:
        specs = {t: self.spec(t) for t in self.zoo.tasks}
        return load_test_sets(specs, self.zoo.manifest.preprocess, self.test_limit)

    @cached_property
    def unlabeled(self) -> dict[str, torch.Tensor]:
        pre = self.zoo.manifest.preprocess
        out = {}
        for t in self.zoo.tasks:
            if t in self.unlabeled_specs:
                out[t] = load_dataset(self.unlabeled_specs[t], "test", pre, limit=self.unlabeled_limit).images
            else:
                out[t] = self.test[t].images if self.unlabeled_limit is None else \
                    load_dataset(self.spec(t), "test", pre, limit=self.unlabeled_limit).images
        return out


def load_test_sets(specs: dict[str, str], preprocess: Preprocess, limit: Optional[int] = None) -> dict[str, TaskData]:
    """Each task's labeled test split (a deterministic subset of `limit` images when given)."""
    return {t: load_dataset(spec, "test", preprocess, limit=limit) for t, spec in specs.items()}


def recorded_specs(tasks: list[TaskInfo], owner: str) -> dict[str, str]:
    """The dataset spec each task of a zoo or family manifest records; an error names a task without one."""
    missing = [t.name for t in tasks if t.data is None]
    if missing:
        raise ValueError(f"{owner}: tasks {missing} record no dataset spec, so they have no test set to evaluate on")
    return {t.name: t.data for t in tasks if t.data is not None}
