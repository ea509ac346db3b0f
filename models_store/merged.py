"""The merged checkpoint of one preference (docs/formats.md, "Merged checkpoint"): written and read here.

    visual.<key>               the vision tower (strip `visual.` for open_clip's `model.visual`)
    heads.<task>.weight|bias   the family's heads
    __metadata__               family_id, variant (the key of the model written), variant_description
                               (JSON: its preference, a member's index, made coefficients),
                               preference (JSON, by task: the variant's own, where it has one),
                               architecture (JSON)

A checkpoint is a function of its variant (kinds/base.py): two preferences served by one point-set
member download the same file.

The service streams it as a download; `pmerge eval --weights` and anything else that takes a
tower's weights read it with `read_tower_weights`, beside plain tower state dicts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import safe_open

from .atomic import atomic_file
from .checkpoint import StateDict, load_state_dict
from .family import Family
from .preference import Preference
from .safetensors_stream import Spec, stream_chunks, stream_size
from .zoo import Head

VISUAL = "visual."
HEADS = "heads."


def checkpoint_specs(family: Family) -> list[Spec]:
    specs: list[Spec] = [(f"{VISUAL}{k}", dtype, shape) for k, dtype, shape in family.tower_specs()]
    for task, head in family.heads.items():
        specs.append((f"{HEADS}{task}.weight", head.weight.dtype, tuple(head.weight.shape)))
        if head.bias is not None:
            specs.append((f"{HEADS}{task}.bias", head.bias.dtype, tuple(head.bias.shape)))
    return specs


def checkpoint_tensors(family: Family, pref: Preference, device: str | torch.device = "cpu"
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    # iter_materialized: at most one merged tensor alive at a time, made on `device`
    for k, v in family.iter_materialized(pref, device):
        yield f"{VISUAL}{k}", v.cpu()
    for task, head in family.heads.items():
        yield f"{HEADS}{task}.weight", head.weight
        if head.bias is not None:
            yield f"{HEADS}{task}.bias", head.bias


def checkpoint_metadata(family: Family, pref: Preference) -> dict[str, str]:
    from .kinds.base import variant_key
    variant = family.variant(pref)
    described = family.body.describe(variant)
    own = described.get("preference")
    return {"family_id": family.family_id, "variant": variant_key(variant),
            "variant_description": json.dumps(described),
            **({} if own is None else {"preference": json.dumps(dict(zip(family.tasks, own)))}),
            "architecture": json.dumps(family.manifest.architecture)}


def checkpoint_chunks(family: Family, pref: Preference, device: str | torch.device = "cpu"
                      ) -> Iterator[bytes | memoryview]:
    """The bytes of the checkpoint of `pref`, in order, one tensor at a time (merged on `device`)."""
    return stream_chunks(checkpoint_specs(family), checkpoint_tensors(family, pref, device),
                         checkpoint_metadata(family, pref))


def write_checkpoint(path: Path, family: Family, pref: Preference, device: str | torch.device = "cpu") -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for chunk in checkpoint_chunks(family, pref, device):
            f.write(chunk)


def checkpoint_size(family: Family, pref: Preference) -> int:
    """The exact size in bytes of the checkpoint file of `pref`."""
    return stream_size(checkpoint_specs(family), checkpoint_metadata(family, pref))


def read_tower_weights(path: str | Path) -> tuple[StateDict, Optional[dict[str, Head]], dict[str, str]]:
    """(tower state dict, heads or None, metadata) of a merged checkpoint or of a plain tower state dict."""
    state = load_state_dict(path)
    if not any(k.startswith(VISUAL) for k in state):
        return state, None, {}
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    tower = {k.removeprefix(VISUAL): v for k, v in state.items() if k.startswith(VISUAL)}
    heads: dict[str, Head] = {}
    for key, value in state.items():
        if key.startswith(HEADS) and key.endswith(".weight"):
            task = key.removeprefix(HEADS).removesuffix(".weight")
            heads[task] = Head(weight=value, bias=state.get(f"{HEADS}{task}.bias"))
    return tower, heads, metadata
