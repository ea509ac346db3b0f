"""Response models of the HTTP API (pydantic v2)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field

from models_store.family import FileCost


class Label(BaseModel):
    label: str
    index: int = Field(description="class index in the task's class list")
    probability: float = Field(description="softmax probability over the task's classes")


class ImageResult(BaseModel):
    index: int = Field(description="position of the image in the request (0-based)")
    filename: Optional[str] = None
    predictions: dict[str, list[Label]] = Field(description="task -> top-k labels, most probable first")


class ClassifyResponse(BaseModel):
    family_id: str
    preference: str = Field(description="canonical preference, named form", examples=["digits:0.7,fashion:0.3"])
    weights: dict[str, float] = Field(description="the canonical preference as task -> weight")
    results: list[ImageResult]


class SelectTrial(BaseModel):
    preference: str = Field(description="canonical preference, named form")
    weights: dict[str, float]
    entropy: float = Field(description="mean prediction entropy (nats) over the images and the family's heads")


class SelectResponse(BaseModel):
    family_id: str
    tasks: list[str]
    images: int
    samples: int
    seed: int
    selected: SelectTrial = Field(description="the trial with the lowest entropy (the first of equals)")
    trials: list[SelectTrial] = Field(description="every candidate, in the order tried: the equal preference, "
                                                  "the vertices, then the Dirichlet(1) draws")


class TaskOut(BaseModel):
    name: str
    classes: list[str]


class FamilyOut(BaseModel):
    family_id: str
    created: str
    method: str
    kind: str = Field(description="the family's kind: how its models are stored and served (docs/formats.md, one "
                                  "section per kind)")
    kind_params: dict[str, Any] = Field(description="the kind's parameters, as the manifest holds them: each kind's "
                                                    "section of docs/formats.md says what they are")
    zoo: Optional[str] = Field(None, description="the name of the zoo the family was trained from")
    tasks: list[TaskOut]
    architecture: dict[str, Any]
    image_size: int
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    files: list[FileCost] = Field(description="each file of the family: its bytes on disk and those it keeps on the "
                                              "device while served (in the serving dtype)")
    disk_bytes: int = Field(description="the family's files on disk, together")
    resident_bytes: int = Field(description="what serving the family keeps on the device, beside the device cache of "
                                            "materialised variants (`device_cache_bytes`)")
    host_bytes: int = Field(description="what serving the family keeps in host memory on an accelerator, copied to "
                                        "the device a piece at a time (on a CPU, host and device are one memory)")
    device_cache_bytes: int = Field(description="the bound of the device cache of materialised variants "
                                                "(PMERGE_DEVICE_CACHE_BYTES; by default, what leaves the family at three of its "
                                                "towers on the device, one tower at least)")


class FamilySummary(BaseModel):
    family_id: str
    method: str
    kind: str
    created: str
    tasks: list[str]
    default: bool = Field(description="served by the routes without a /families/{id} prefix")
    resident: bool = Field(description="loaded now (else loaded by its first request)")


class Health(BaseModel):
    status: str
    family_id: Optional[str] = None
    detail: Optional[str] = None
