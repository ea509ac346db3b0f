"""ReACT (kind feature-map): the per-task map's closed form, the preference mix, and the learner
through the CLI, its downloads folding the map into `proj`."""
import torch

from models_store.cli import main
from models_store.kinds.feature_map import preference_map
from models_store.preference import from_weights
from models_store.store import open_family
from trainer.families.react.learner import task_map


def test_a_rotation_of_the_merged_features_is_recovered():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 40, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    w, c = task_map(z, rotation @ z, beta=0.1)
    assert torch.allclose(w, rotation, atol=1e-10)  # ridge and Procrustes agree on an exact rotation
    assert torch.allclose(c, z @ z.T + 0.1 * torch.eye(6, dtype=torch.float64))
    # in general: the ridge solution (Z_ind Z^T + beta W_orth)(Z Z^T + beta I)^-1
    target = torch.randn(6, 40, generator=g, dtype=torch.float64)
    w, c = task_map(z, target, beta=2.0)
    u, _, vh = torch.linalg.svd(target @ z.T)
    assert torch.allclose(w @ c, target @ z.T + 2.0 * u @ vh, atol=1e-9)


def test_the_preference_map_is_each_tasks_at_its_vertex_and_mixes_by_the_gram_matrices():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(3, 4, 4, generator=g)
    z = torch.randn(3, 4, 20, generator=g)
    C = z @ z.transpose(1, 2) + 0.1 * torch.eye(4)
    for t in range(3):
        assert torch.allclose(preference_map(W, C, torch.eye(3)[t].tolist(), torch.device("cpu")), W[t], atol=1e-4)
    same = C[0].expand(3, 4, 4)
    p = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(preference_map(W, same, p.tolist(), torch.device("cpu")), (p[:, None, None] * W).sum(0), atol=1e-4)


def test_react_family_through_the_cli(quick_zoo, tmp_path, capsys, assert_serves_materialised):
    main(["train", "react", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--calibration", "64",
          "--device", "cpu"])
    family = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    m = family.manifest
    assert m.kind == "feature-map" and m.method == "react" and m.hyperparameters["base"] == "tsv-m"
    assert m.metrics["preference_stage_seconds"] > 0
    model = family.servable(torch.device("cpu"), torch.float32)
    prefs = torch.stack([from_weights(w, family.tasks).tensor() for w in ([1, 0, 0], [0, 1, 0], [1, 1, 1], [1, 0, 0])])
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert_serves_materialised(family, prefs, images, model)  # the download folds the map into proj
    assert model.solved == 3  # the repeated preference reuses its map


def test_families_front_bench_on_a_quick_zoo(quick_zoo, tmp_path):
    """bench/families_front.py end to end on two quick families (the figures come from the demo zoo)."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from bench import families_front
    out = families_front.main(["--zoo", str(quick_zoo.root), "--only", "react,ta-pref", "--grid", "1", "--device",
                               "cpu", "--out-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    assert set(data["results"]) == {"react", "ta-pref"}
    react = data["results"]["react"]
    assert react["kind"] == "feature-map" and react["hypervolume"] > 0 and react["preference_stage_seconds"] > 0
    assert set(react["vertex_over_finetuned"]) == set(quick_zoo.tasks)


def test_dominance_sweep_on_a_quick_zoo_agrees_with_the_published_families(quick_zoo, tmp_path):
    """bench/dominance_sweep.py builds its candidates from their parts: ReACT from its parts must
    give the published ReACT family's points, and the anchored candidate its vertices exactly."""
    import sys
    from pathlib import Path
    import pytest
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from bench import dominance_sweep
    out = dominance_sweep.main(["--zoo", str(quick_zoo.root), "--seeds", "0", "--published", "react,ta-pref",
                                "--bases", "tsv-m", "--anchors", "0.7", "--device", "cpu", "--out-dir", str(tmp_path)])
    rows = out["per_seed"][0]
    published, parts = rows["react"], rows["react on tsv-m, beta 0.1"]
    for pref, accuracy in published["points"].items():
        assert parts["points"][pref] == pytest.approx(accuracy, abs=1e-6), pref  # far below one image
    anchored = rows["anchored q=0.7 on tsv-m, beta 0.1"]
    assert anchored["worst_vertex_over_finetuned"] == pytest.approx(1.0)
    assert anchored["hypervolume"] > 0 and set(out["summary"]) == set(rows)


def test_a_feature_map_family_refuses_maps_that_do_not_fit():
    import pytest
    from models_store import StoreError
    from models_store.kinds.feature_map import FeatureMapFamily, FeatureMapParams
    from models_store.tower import MICRO, build_tower
    base = build_tower(MICRO).state_dict()
    d = base["proj"].shape[1]
    good = torch.eye(d).expand(3, d, d)
    FeatureMapFamily(base, good, good, FeatureMapParams(dim=d), 3, MICRO, "f")
    with pytest.raises(StoreError, match="do not fit 2 tasks of dim"):
        FeatureMapFamily(base, good, good, FeatureMapParams(dim=d), 2, MICRO, "f")
    with pytest.raises(StoreError, match="needs the tower's output projection"):
        FeatureMapFamily({k: v for k, v in base.items() if k != "proj"}, good, good, FeatureMapParams(dim=d), 3,
                         MICRO, "f")
    # anchored: every float parameter needs every task's direction, of the base's shape
    from models_store.kinds.anchored_map import AnchoredMapFamily, AnchoredMapParams
    from models_store.task_tensors import TaskTensors, stored_tensors
    params = AnchoredMapParams(dim=d, anchor=0.7)
    towards = {k: torch.zeros(3, *v.shape) for k, v in base.items() if v.is_floating_point()}
    AnchoredMapFamily(base, good, good, TaskTensors.dense(towards), params, 3, MICRO, "a")
    with pytest.raises(StoreError, match="towards.safetensors lacks or misshapes some task's tensor of proj"):
        AnchoredMapFamily(base, good, good, TaskTensors.dense({k: v for k, v in towards.items() if k != "proj"}), params,
                          3, MICRO, "a")
    with pytest.raises(StoreError, match="lacks or misshapes some task's tensor of proj"):
        AnchoredMapFamily(base, good, good, TaskTensors.dense(towards | {"proj": torch.zeros(2, *base["proj"].shape)}),
                          params, 3, MICRO, "a")
    # quantised: each task's codes and scales, of the sizes the base's shapes give; the bits as kind_params say
    stored = {}
    for t in "abc":
        stored |= stored_tensors("", t, {k: torch.randn(v.shape) for k, v in base.items()}, base, 4)
    four = AnchoredMapParams(dim=d, anchor=0.7, towards_bits=4)
    AnchoredMapFamily(base, good, good, TaskTensors.read(dict(stored), base, list("abc"), 4), four, 3, MICRO, "a")
    with pytest.raises(StoreError, match="lacks or misshapes some task's tensor of proj"):
        AnchoredMapFamily(base, good, good, TaskTensors.read({k: v for k, v in stored.items() if k != "b/proj:scale"},
                                                         base, list("abc"), 4), four, 3, MICRO, "a")
    with pytest.raises(StoreError, match="holds 4-bit targets, kind_params say 32"):
        AnchoredMapFamily(base, good, good, TaskTensors.read(dict(stored), base, list("abc"), 4), params, 3, MICRO, "a")
    with pytest.raises(ValueError, match="anchor"):
        AnchoredMapParams(dim=d, anchor=0.4)  # below 0.5 two tasks could exceed it


def test_react_anchored_is_react_below_the_anchor_and_the_fine_tuned_tower_at_a_vertex(quick_zoo, tmp_path, capsys,
                                                                                       assert_serves_materialised):
    common = ["--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--calibration", "64", "--device", "cpu"]
    main(["train", "react", *common])
    react = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    main(["train", "react-anchored", *common, "--anchor", "0.6", "--towards-bits", "32"])
    family = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    assert family.manifest.kind == "anchored-map" and family.manifest.kind_params["anchor"] == 0.6
    tasks = family.tasks
    # where no task weighs more than the anchor, it is ReACT's model, to the byte
    for w in ([1, 1, 1], [0.6, 0.4, 0], [0.2, 0.3, 0.5]):
        mine, theirs = (f.materialize(from_weights(w, tasks)) for f in (family, react))
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), w
    # at a vertex, the fine-tuned tower (its proj times the identity map)
    for t in tasks:
        mine, finetuned = family.materialize(from_weights([float(u == t) for u in tasks], tasks)), quick_zoo.finetuned(t)
        assert all(torch.allclose(mine[k], finetuned[k], atol=1e-5) for k in finetuned), t
    # between: the straight line, half way at p_k = (1 + q) / 2
    half = family.materialize(from_weights([0.8, 0.1, 0.1], tasks))
    base, finetuned = react.materialize(from_weights([1, 1, 1], tasks)), quick_zoo.finetuned(tasks[0])
    k = "transformer.resblocks.0.attn.in_proj_weight"
    assert torch.allclose(half[k], (base[k] + finetuned[k]) / 2, atol=1e-6)
    # a mixed batch: base-tower images, anchored images, one anchored tower per (task, a); cold and warm
    prefs = torch.stack([from_weights(w, tasks).tensor() for w in
                         ([1, 0, 0], [0.8, 0.1, 0.1], [1, 1, 1], [0, 0, 1], [0.8, 0.1, 0.1], [0.1, 0.2, 0.7])])
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = family.servable(torch.device("cpu"), torch.float32, cache_bytes=8 * family.tower_bytes())
    assert_serves_materialised(family, prefs, images, model)
    assert model.materialized == 4  # (0, 1), (0, 0.5), (2, 1), (2, 0.25): the repeated preference shares its tower
    assert_serves_materialised(family, prefs, images, model)
    assert model.materialized == 4
    # maps and towers share one bound: room for one tower holds the whole family's device memory
    small = family.servable(torch.device("cpu"), torch.float32, cache_bytes=family.tower_bytes())
    assert_serves_materialised(family, prefs, images, small)
    assert small.towers.cache is small.cache and small.cache.bytes <= family.tower_bytes()


def test_react_anchored_stores_its_targets_in_four_bits_within_half_a_step(quick_zoo, tmp_path, capsys):
    common = ["--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--calibration", "64", "--device", "cpu"]
    main(["train", "react-anchored", *common, "--anchor", "0.6"])  # the default: 4 bits
    family = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    assert family.manifest.kind_params["towards_bits"] == 4
    main(["train", "react-anchored", *common, "--anchor", "0.6", "--towards-bits", "32"])
    dense = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    size = lambda f: (tmp_path / f.family_id / "towards.safetensors").stat().st_size  # noqa: E731
    # K 4-bit targets with a float16 scale per 64 values: 4.25 / 32 of the dense float32 ones, plus the
    # headers, which name twice as many tensors (a visible part on this micro tower, nothing on a real one)
    assert size(family) < 0.2 * size(dense)
    base = family.materialize(from_weights([1, 1, 1], family.tasks))
    for t in family.tasks:
        mine = family.materialize(from_weights([float(u == t) for u in family.tasks], family.tasks))
        finetuned = quick_zoo.finetuned(t)
        for k, w in finetuned.items():
            if not w.is_floating_point() or k == "proj":  # proj: the identity map folded in, as dense
                continue
            step = (w.float() - base[k].float()).abs().max() / 7  # the coarsest group's step bounds each
            assert (mine[k].float() - w.float()).abs().max() <= step / 2 + 1e-6, (t, k)
