"""The low-rank family's one definition of its targets and its one update A (sum_k p_k G_k) B^T."""
import pytest
import torch

from models_store import StoreError
from models_store.family import FamilyManifest, publish_family
from models_store.kinds.lowrank import LowRank, lowrank_delta, mix, parse_target, target_names
from models_store.preprocess import Preprocess
from models_store.tower import MICRO, build_tower
from models_store.zoo import TaskInfo


def test_update_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    A, B, G = torch.randn(6, 2, generator=g), torch.randn(5, 2, generator=g), torch.randn(3, 2, 2, generator=g)
    pref = torch.tensor([0.2, 0.3, 0.5])
    expected = A @ (0.2 * G[0] + 0.3 * G[1] + 0.5 * G[2]) @ B.T
    assert torch.allclose(lowrank_delta(A, B, G, pref), expected, atol=1e-6)
    assert torch.allclose(LowRank(A, B, G).delta(pref), expected, atol=1e-6)
    prefs = torch.stack([pref, torch.tensor([1.0, 0.0, 0.0])])
    assert torch.allclose(mix(prefs, G)[1], G[0]) and mix(prefs, G).shape == (2, 2, 2)


def test_the_trainer_picks_only_what_the_manifest_accepts_and_the_service_serves():
    keys = list(build_tower(MICRO).state_dict())
    names = target_names(keys, ["in_proj", "out_proj"])
    assert names and all(parse_target(n) is not None for n in names)
    assert parse_target("transformer.resblocks.1.attn.out_proj.weight") == (1, "out_proj")
    # an attention outside the transformer's blocks (open_clip's attentional pooler) is not a target
    assert parse_target("attn_pool.attn.in_proj_weight") is None
    assert target_names(keys + ["attn_pool.attn.in_proj_weight"], ["in_proj"]) == target_names(keys, ["in_proj"])
    with pytest.raises(ValueError, match="unknown targets"):
        target_names(keys, ["mlp"])
    manifest = dict(family_id="f", created="now", method="pm", architecture=MICRO, preprocess=Preprocess(image_size=16),
                    tasks=[TaskInfo(name="a", classes=["x", "y"])], kind="lowrank")
    assert FamilyManifest(**manifest, kind_params={"rank": 2, "targets": names}).params.rank == 2
    refused = FamilyManifest(**manifest, kind_params={"rank": 2, "targets": ["attn_pool.attn.in_proj_weight"]})
    with pytest.raises(ValueError, match="cannot adapt 'attn_pool.attn.in_proj_weight'"):
        refused.params  # validated when the family is loaded or published, not to list it
    with pytest.raises(StoreError, match="cannot adapt 'attn_pool.attn.in_proj_weight'"):
        publish_family("unused-store", refused, {}, {})
    with pytest.raises(ValueError, match="unknown family kind 'magic'"):
        FamilyManifest(**(manifest | {"kind": "magic"}))
