"""Kind point-set: each member's tower against its formula, the pick rule, the servable and its cache."""
import pytest
import torch

from models_store import StoreError
from models_store.checkpoint import load_state_dict
from models_store.family import Family
from models_store.kinds.point_set import COEFFICIENTS, MERGE_PREFIX, PRETRAINED, TASK_VECTORS
from models_store.preference import from_weights
from models_store.tower import head_logits, load_tower

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from svc_helpers import POINT_SET_MEMBERS, TASKS, make_point_set_family  # noqa: E402

TASK_NAMES = list(TASKS)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Family:
    return Family(make_point_set_family(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def merging_family(tmp_path_factory) -> Family:
    """The same members over merge vectors (HM3's layout)."""
    return Family(make_point_set_family(tmp_path_factory.mktemp("store"), merge_vectors=True))


def stored(family, prefix=""):
    pre = load_state_dict(family.path / PRETRAINED)
    tv = load_state_dict(family.path / TASK_VECTORS)
    coef = load_state_dict(family.path / COEFFICIENTS)
    return pre, {t: {k: tv[f"{prefix}{t}/{k}"] for k in pre} for t in TASK_NAMES}, coef


@pytest.mark.parametrize("which", ["task vectors", "merge vectors"])
def test_each_member_is_its_formula(family, merging_family, which):
    family = family if which == "task vectors" else merging_family
    pre, tau, coef = stored(family)
    merges = tau if which == "task vectors" else stored(family, MERGE_PREFIX)[1]
    for i, member in enumerate(POINT_SET_MEMBERS):
        theta = family.materialize(from_weights(member["preference"], TASK_NAMES))
        for k, w in pre.items():
            lam = [coef[f"{i}/{k}"][j].item() for j in range(3)] if member.get("per_tensor") else member["coefficients"]
            basis = merges
            if member.get("blocks") and k.startswith("transformer.resblocks.0."):
                lam, basis = [0.0, 1.0, 0.0], tau  # finetuned:fashion: theta0 + tau_fashion, never a merge vector
            expected = w + sum(l * basis[t][k] for l, t in zip(lam, TASK_NAMES))
            if member.get("blocks") and k in {f"transformer.resblocks.1.{s}" for s in
                                              ("attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_proj.weight",
                                               "mlp.c_proj.bias")}:
                expected = torch.zeros_like(w)  # skip
            assert torch.allclose(theta[k], expected, atol=1e-6), (i, k)


def test_a_skipped_block_is_the_identity(family):
    tower = load_tower(family.manifest.architecture, family.materialize(from_weights([0.5, 0.5, 0], TASK_NAMES)))
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(tower.transformer.resblocks[1](x), x)


def test_any_preference_picks_the_nearest_member(family):
    pick = family.body.member_weights.pick
    prefs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.45, 0.45, 0.1], [0, 0, 1.0]])
    assert pick(prefs).tolist() == [0, 1, 3, 4, 2]
    # the download of a preference is its member's tower
    near = family.materialize(from_weights([0.9, 0.05, 0.05], TASK_NAMES))
    member = family.materialize(from_weights([1, 0, 0], TASK_NAMES))
    assert all(torch.equal(near[k], member[k]) for k in member)


@pytest.mark.parametrize("which", ["task vectors", "merge vectors"])
def test_servable_equals_each_members_tower_cold_and_warm(family, merging_family, which):
    family = family if which == "task vectors" else merging_family
    model = family.servable(torch.device("cpu"), torch.float32, cache_bytes=2 * family.tower_bytes())
    g = torch.Generator().manual_seed(3)
    images = torch.randn(8, 3, 16, 16, generator=g)
    weights = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.34, 0.33, 0.33], [0.5, 0.5, 0], [0.9, 0.1, 0], [0, 0.2, 0.8],
               [0.3, 0.3, 0.4]]
    prefs = torch.stack([from_weights(w, TASK_NAMES).tensor() for w in weights])
    for round in range(2):  # cold, then again with the cache holding the last two
        logits = model.logits(images, family.resolve(prefs))
        for i, w in enumerate(weights):
            tower = load_tower(family.manifest.architecture, family.materialize(from_weights(w, TASK_NAMES)))
            with torch.no_grad():
                feats = tower(images[i:i + 1])
            for t, h in family.heads.items():
                assert (logits[t][i] - head_logits(feats, h.weight, h.bias)[0]).abs().max() <= 1e-4, (round, i, t)
        assert len(model.cache) == 2  # never more than the cache holds
    before = model.materialized
    model.logits(images[:2], family.resolve(prefs[[0, 0]]))  # members run in index order: 3 and 4 were the last, 0 is a miss
    model.logits(images[:2], family.resolve(prefs[[0, 0]]))  # now a hit
    assert model.materialized == before + 1
    # the member that skips block 1 runs a tower of one block: skipping saves its time
    assert [len(model.tower(i).transformer.resblocks) for i in (3, 4)] == [2, 1]


def test_members_inconsistent_with_the_family_are_refused(family, tmp_path):
    import json
    import shutil
    bad = tmp_path / "copy" / family.path.name  # a family is named by its directory
    shutil.copytree(family.path, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["kind_params"]["members"][4]["blocks"] = ["merge"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="member 4 names 1 block sources; the tower has 2 blocks"):
        Family(bad, verify=False)
    manifest["kind_params"]["members"][4]["blocks"] = ["merge", "finetuned:cats"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="block 1's source 'finetuned:cats'"):
        Family(bad, verify=False)
    manifest["kind_params"]["members"][0]["per_tensor"] = True
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="either task-level `coefficients` or `per_tensor: true`"):
        Family(bad, verify=False)
    manifest["kind_params"]["pick"] = "magic"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="unknown pick rule 'magic'"):
        Family(bad, verify=False)


def test_a_family_that_says_merge_vectors_needs_them(family, tmp_path):
    import json
    import shutil
    bad = tmp_path / "copy" / family.path.name  # a family is named by its directory
    shutil.copytree(family.path, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["kind_params"]["merge_vectors"] = True
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="lacks or misshapes some task's merge vector of"):
        Family(bad, verify=False)


# ---- members made for the preference asked (`at_preference`) ----------------------------------

@pytest.fixture(scope="module")
def ta_family(tmp_path_factory) -> Family:
    return Family(make_point_set_family(tmp_path_factory.mktemp("store"), at_preference={
        "rule": "task-arithmetic", "scale": 0.3}))


def surrogate_rule(weights) -> dict:
    return {"rule": "surrogate", "metric": "accuracy", "scalarisation": "tchebycheff", "c_max": 1.0,
            "weights": weights}


@pytest.fixture(scope="module")
def surrogate_family(tmp_path_factory) -> Family:
    g = torch.Generator().manual_seed(5)
    weights = (torch.randn(3, 10, generator=g) * 0.3 + torch.cat([torch.zeros(3, 1), 4 * torch.eye(3),
                                                                   torch.zeros(3, 6)], 1)).tolist()
    return Family(make_point_set_family(tmp_path_factory.mktemp("store"), at_preference=surrogate_rule(weights)))


def test_task_arithmetic_at_the_preference_asked_is_its_formula(ta_family):
    pre, tau, _ = stored(ta_family)
    for w in ([0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [1, 0, 0], [0.123456, 0.5, 0.376544]):
        theta = ta_family.materialize(from_weights(w, TASK_NAMES))
        c = [round(0.3 * 3 * x, 3) for x in w]  # s K p, to the stated 3 decimals
        for k, v in pre.items():
            assert torch.allclose(theta[k], v + sum(ci * tau[t][k] for ci, t in zip(c, TASK_NAMES)), atol=1e-6), (w, k)
    # the stored members stay what the learner made: the front evaluates and draws them
    assert len(ta_family.body.members()) == len(POINT_SET_MEMBERS)


def test_preferences_closer_than_the_tolerance_share_one_tower_and_downloads_are_what_is_served(ta_family):
    model = ta_family.servable(torch.device("cpu"), torch.float32, cache_bytes=2 * ta_family.tower_bytes())
    weights = [[0.2, 0.3, 0.5], [0.20001, 0.29999, 0.5], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]
    prefs = torch.stack([from_weights(w, TASK_NAMES).tensor() for w in weights])
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    logits = model.logits(images, ta_family.resolve(prefs))
    assert model.materialized == 2  # the first two within 1e-4 per weight: one tower
    for i, w in enumerate(weights):
        tower = load_tower(ta_family.manifest.architecture, ta_family.materialize(from_weights(w, TASK_NAMES)))
        with torch.no_grad():
            feats = tower(images[i:i + 1])
        for t, h in ta_family.heads.items():
            assert (logits[t][i] - head_logits(feats, h.weight, h.bias)[0]).abs().max() <= 1e-4, (i, t)
    model.logits(images[:1], ta_family.resolve(prefs[:1]))
    assert model.materialized == 2  # cached


def test_surrogate_members_solve_the_scalarisation_from_the_stored_members(surrogate_family):
    import numpy as np
    rule = surrogate_family.body.member_weights.params.at_preference
    starts = np.array([m["coefficients"] for m in POINT_SET_MEMBERS if "coefficients" in m])
    pre, tau, _ = stored(surrogate_family)
    for w in ([1, 0, 0], [0.3, 0.3, 0.4], [0.1, 0.7, 0.2]):
        c = rule.surrogates.best_coefficients(np.array(w, dtype=float), "tchebycheff", starts).round(3)
        theta = surrogate_family.materialize(from_weights(w, TASK_NAMES))
        k = "conv1.weight"
        assert torch.allclose(theta[k], pre[k] + sum(float(ci) * tau[t][k] for ci, t in zip(c, TASK_NAMES)), atol=1e-5)
    # at a vertex the Tchebycheff member reaches that task's ideal, as the surrogates predict
    c = np.array(surrogate_family.resolve([[0.0, 1.0, 0.0]])[0])
    assert rule.surrogates.predict(c[None])[0, 1] == pytest.approx(rule.surrogates.ideal()[1], abs=2e-3)


def test_surrogates_that_do_not_fit_the_tasks_are_refused(tmp_path):
    with pytest.raises(StoreError, match=r"surrogates' weights are \[3, 6\]; 3 tasks need \[3, 10\]"):
        Family(make_point_set_family(tmp_path, at_preference=surrogate_rule([[0.0] * 6] * 3)), verify=False)
    with pytest.raises(StoreError, match="rule"):
        Family(make_point_set_family(tmp_path / "b", at_preference={"rule": "magic"}), verify=False)
