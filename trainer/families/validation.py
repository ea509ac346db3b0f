"""Labelled validation data of the learners that evaluate merges for real (MAP, HM3): one
definition of the flags and of where the data come from."""
from __future__ import annotations

import sys
from typing import Optional

from pydantic import Field

from models_store.zoo import TrainingSplit

from ..data import TaskData
from ..data.load import TrainingPart, load_dataset, load_validation
from .registry import LearnContext, LearnerConfig


class ValidationConfig(LearnerConfig):
    val_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "labelled validation data: this class-stratified fraction of each task's TRAIN split, drawn from the "
        "images the zoo's towers did not train on when its manifest says which (all of them when fewer; never "
        "the test split, which stays for eval and front)"))
    val: dict[str, str] = Field({}, description="TASK=SPEC: the whole train split of SPEC as that task's validation "
                                                "data instead; repeatable")
    seed: int = 0


def validation_sets(ctx: LearnContext, config: ValidationConfig) -> dict[str, TaskData]:
    unknown = set(config.val) - set(ctx.zoo.tasks)
    if unknown:
        raise ValueError(f"--val names unknown tasks {sorted(unknown)}; tasks are {ctx.zoo.tasks}")
    pre = ctx.zoo.manifest.preprocess
    out, seen = {}, []
    for task in ctx.zoo.tasks:
        if task in config.val:
            out[task] = load_dataset(config.val[task], "train", pre)
        else:
            spec = ctx.zoo.task(task).data
            if spec is None:
                raise ValueError(f"zoo task {task!r} records no dataset spec: give --val {task}=SPEC")
            out[task], unseen = load_validation(spec, pre, config.val_fraction, config.seed,
                                                finetuning_subset(ctx.zoo))
            if unseen is False:
                seen.append(task)
    if seen:
        print(f"note: the validation images of {', '.join(seen)} are images their fine-tuned towers trained on (the "
              f"zoo was built with --holdout 0 and no --train-limit below the train split's size), so merges and "
              f"paths that lean on fine-tuned weights score better there than on new images; give --val TASK=SPEC "
              f"with held-out images, or build the zoo with `pmerge zoo --holdout`", file=sys.stderr)
    return out


def finetuning_subset(zoo) -> Optional[TrainingPart]:
    """The part of each train split that the towers of a zoo `pmerge zoo` built trained on (its
    manifest records it; a format-1 zoo in the flags of its metrics; a zoo from before --holdout
    held nothing out), else None."""
    split = zoo.manifest.training
    if split is None:
        config = (zoo.manifest.metrics or {}).get("config") or {}
        if "train_limit" not in config or config.get("seed") is None:
            return None
        split = TrainingSplit(train_limit=config["train_limit"], seed=config["seed"],
                              holdout=config.get("holdout", 0.0))
    return TrainingPart(split.train_limit, split.seed, split.holdout)
