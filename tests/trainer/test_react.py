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
        assert torch.allclose(preference_map(W, C, torch.eye(3)[t]), W[t], atol=1e-4)
    same = C[0].expand(3, 4, 4)
    p = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(preference_map(W, same, p), (p[:, None, None] * W).sum(0), atol=1e-4)


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
