"""Family kinds (docs/formats.md, "Family"): one module each, one line each in KINDS and in
MATERIALIZATION.

A kind is a class with `name`, `files` (the tensor files beside manifest.json and
heads.safetensors), `Params` (the pydantic model of its manifest's `kind_params`) and
`load(path, params, tasks, architecture, family_id)`, which checks the files and returns a
`KindFormat` (base.py): `resolve(preferences)` gives each preference's variant, `materialize(variant)`
its plain open_clip tower, one tensor at a time, and `servable(...)` the model that serves a batch
in which every image has its own variant (by default the generic one, base.VariantServable). The
service talks only to that.
"""
from __future__ import annotations

from importlib import import_module

from .. import StoreError

# name -> module:class; a kind's code (torch, open_clip) is imported when the kind is first used,
# so reading and listing manifests costs none of it
KINDS = {"lowrank": f"{__name__}.lowrank:LowRankFamily", "point-set": f"{__name__}.point_set:PointSetFamily",
         "feature-map": f"{__name__}.feature_map:FeatureMapFamily",
         "anchored-map": f"{__name__}.anchored_map:AnchoredMapFamily"}

# name -> the version of what the kind materialises for a preference: bumped when a change of code
# changes those tensors (not only their last bits), so that download caches and ETags made by an
# earlier build are never served for this one's (service/engine/downloads.py keys on it)
MATERIALIZATION = {"lowrank": 1, "point-set": 1, "feature-map": 2, "anchored-map": 2}

FORMAT_1_KIND = "lowrank"  # format-1 manifests predate kinds: every family then was low-rank


def get_kind(name: str):
    if name not in KINDS:
        raise StoreError(f"unknown family kind {name!r} (this pmerge knows {', '.join(KINDS)})")
    module, _, cls = KINDS[name].partition(":")
    return getattr(import_module(module), cls)
