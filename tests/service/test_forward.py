"""Our per-image-preference forward equals the tower with merged weights, image by image."""
import pytest
import torch
from open_clip.transformer import CustomResidualAttentionBlock

from models_store.kinds.lowrank import LowRank, LowRankServable, UnsupportedTower
from models_store.preference import from_weights
from models_store.tower import MICRO, build_tower, head_logits, load_tower


def random_prefs(n: int, tasks, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, len(tasks), generator=g) ** 3  # some near-corner preferences too
    return [from_weights(r.tolist(), tasks) for r in raw]


def reference_logits(family, pref, images):
    tower = load_tower(family.manifest.architecture, family.materialize(pref))
    with torch.no_grad():
        feats = tower(images)
    return {t: head_logits(feats, h.weight, h.bias) for t, h in family.heads.items()}


def test_mixed_batch_equals_materialized_towers(family):
    model = family.servable(torch.device("cpu"), torch.float32)
    images = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    prefs = random_prefs(7, family.tasks)
    logits = model.logits(images, family.resolve(torch.stack([p.tensor() for p in prefs])))
    for i, pref in enumerate(prefs):
        ref = reference_logits(family, pref, images[i:i + 1])
        for t in family.tasks:
            assert logits[t].shape == (7, len(family.manifest.tasks[family.tasks.index(t)].classes))
            assert (logits[t][i] - ref[t][0]).abs().max().item() <= 1e-4, (i, t)


def test_preferences_change_the_output(family):
    model = family.servable(torch.device("cpu"), torch.float32)
    image = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    prefs = torch.eye(3)
    feats = model.features(image, model.plan(family.resolve(prefs)))
    assert (feats[0] - feats[1]).abs().max() > 1e-2 and (feats[1] - feats[2]).abs().max() > 1e-2


def test_grayscale_input_is_repeated_to_rgb(family):
    model = family.servable(torch.device("cpu"), torch.float32)
    gray = torch.randn(2, 1, 16, 16)
    prefs = torch.full((2, 3), 1 / 3)
    variants = family.resolve(prefs)
    gray_logits, rgb_logits = model.logits(gray, variants), model.logits(gray.expand(-1, 3, -1, -1), variants)
    assert all(torch.allclose(gray_logits[t], rgb_logits[t]) for t in family.tasks)


def test_refuses_custom_blocks(family):
    tower = build_tower(MICRO)
    tower.transformer.resblocks[0] = CustomResidualAttentionBlock(32, 2)
    with pytest.raises(UnsupportedTower, match="block 0 is a CustomResidualAttentionBlock"):
        LowRankServable(tower, family.body.lowrank, family.heads, torch.device("cpu"), torch.float32)


def test_refuses_targets_outside_attention(family):
    tower = build_tower(MICRO)
    w = tower.state_dict()["transformer.resblocks.0.mlp.c_fc.weight"]
    bad = {"transformer.resblocks.0.mlp.c_fc.weight": LowRank(torch.zeros(w.shape[0], 2), torch.zeros(w.shape[1], 2),
                                                               torch.zeros(3, 2, 2))}
    with pytest.raises(UnsupportedTower, match="mlp.c_fc.weight"):
        LowRankServable(tower, bad, family.heads, torch.device("cpu"), torch.float32)
