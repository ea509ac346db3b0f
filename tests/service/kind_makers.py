"""A small family of every kind the registry knows, and of the test-only kind (vertex_kind.py): what
the kind contract test and the fake-CUDA tier run over. A kind added to the registry without a maker
here fails `check_every_kind_has_a_maker`."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

import vertex_kind
from models_store import kinds
from models_store.family import FamilyManifest, now_iso, publish_family
from models_store.preprocess import Preprocess
from models_store.tower import MICRO, build_tower
from models_store.zoo import Head, TaskInfo
from svc_helpers import TASKS, make_family, make_feature_map_family, make_point_set_family


def make_vertex_family(store: Path) -> Path:
    g = torch.Generator().manual_seed(5)
    dim = MICRO["custom"]["embed_dim"]
    towers = {t: {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in build_tower(MICRO).state_dict().items()}
              for t in TASKS}
    heads = {t: Head(weight=torch.randn(len(c), dim, generator=g) * 5) for t, c in TASKS.items()}
    manifest = FamilyManifest(family_id="vertices-test", created=now_iso(), method="test", architecture=MICRO,
                              preprocess=Preprocess(image_size=16),
                              tasks=[TaskInfo(name=t, classes=c) for t, c in TASKS.items()], kind=vertex_kind.NAME)
    return publish_family(store, manifest, vertex_kind.family_files(towers), heads)


# name -> maker(store) -> the family's path; the first word of a name is its kind
MAKERS: dict[str, Callable[[Path], Path]] = {
    "lowrank": make_family, "point-set": make_point_set_family,
    "point-set at-preference": lambda store: make_point_set_family(
        store, family_id="ta-pref-contract", at_preference={"rule": "task-arithmetic", "scale": 0.3}),
    "point-set 4-bit": lambda store: make_point_set_family(store, family_id="hm3-4bit-contract", merge_vectors=True,
                                                           vector_bits=4),
    "feature-map": make_feature_map_family,
    "anchored-map": lambda store: make_feature_map_family(store, family_id="anchored-contract", anchor=0.6),
    "anchored-map 4-bit": lambda store: make_feature_map_family(store, family_id="anchored-4bit-contract", anchor=0.6,
                                                                towards_bits=4),
    vertex_kind.NAME: make_vertex_family}


@contextmanager
def vertex_kind_registered() -> Iterator[None]:
    """The test-only kind in the registry, as a new kind's one line would put it there."""
    import pytest
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(kinds.KINDS, vertex_kind.NAME, "vertex_kind:VertexFamily")
        patch.setitem(kinds.MATERIALIZATION, vertex_kind.NAME, 1)
        yield


def check_every_kind_has_a_maker() -> None:
    assert set(kinds.KINDS) <= {name.split()[0] for name in MAKERS}, set(kinds.KINDS) - set(MAKERS)
    assert set(kinds.KINDS) == set(kinds.MATERIALIZATION)
