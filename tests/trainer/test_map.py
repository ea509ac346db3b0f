"""MAP (seed 000): design, surrogates, search, validation data, pick rules, and the learner through the CLI."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models_store.cli import main
from models_store.kinds.point_set import MemberTable, tchebycheff, weighted_sum
from models_store.preprocess import Preprocess
from models_store.preference import from_weights
from models_store.store import open_family
from trainer.data import load_dataset
from trainer.data import DatasetError
from trainer.data.load import TrainingPart, load_validation
from trainer.families.map import learner as map_family
from trainer.families.map.design import default_budget, design_points, surrogate_size
from trainer.families.map.search import predicted_pareto_set
from trainer.families.map.surrogate import fit_surrogate, link, quadratic_features


def test_design_has_the_one_hot_and_isotropic_points_and_refuses_a_small_budget():
    points = design_points(3, default_budget(3), 1.0, "sobol", seed=0)
    assert points.shape == (20, 3) and surrogate_size(3) == 10
    assert np.array_equal(points[:3], np.eye(3)) and np.allclose(points[3:6], [[0.15] * 3, [0.3] * 3, [0.5] * 3])
    assert points.min() >= 0 and points.max() <= 1.0
    assert np.array_equal(points, design_points(3, 20, 1.0, "sobol", seed=0))  # deterministic
    assert len(np.unique(design_points(3, 20, 0.5, "lhs", seed=1)[6:], axis=0)) == 14
    with pytest.raises(ValueError, match="give --budget 10 or more"):
        design_points(3, 9, 1.0, "sobol", seed=0)


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_surrogate_recovers_a_quadratic_through_its_link(metric):
    rng = np.random.default_rng(0)
    c = design_points(3, 30, 1.0, "sobol", seed=0)
    truth = rng.normal(size=quadratic_features(c).shape[1])
    y = link(quadratic_features(c) @ truth, metric)
    s = fit_surrogate(c, y, metric)
    assert s.r2 > 0.999 and s.loo_rmse < 1e-3
    fresh = rng.random((5, 3))
    assert np.allclose(s.predict(fresh), link(quadratic_features(fresh) @ truth, metric), atol=1e-3)


def test_predicted_pareto_set_trades_off_two_tasks_inside_the_box():
    c = design_points(2, 12, 1.0, "sobol", seed=0)
    # task 0 best at c = (1, 0), task 1 at (0, 1): a real trade-off
    y0 = link(2 * c[:, 0] - 2 * c[:, 1] - 1.5 * c[:, 0] ** 2, "accuracy")
    y1 = link(2 * c[:, 1] - 2 * c[:, 0] - 1.5 * c[:, 1] ** 2, "accuracy")
    surrogates = [fit_surrogate(c, y0, "accuracy"), fit_surrogate(c, y1, "accuracy")]
    front, predicted = predicted_pareto_set(surrogates, 1.0, population=20, generations=40, seed=0)
    assert len(front) >= 3 and front.min() >= 0 and front.max() <= 1
    for i in range(len(front)):  # no member is dominated by another
        assert not any(np.all(predicted[j] >= predicted[i]) and np.any(predicted[j] > predicted[i])
                       for j in range(len(front)))
    assert np.allclose(predicted[:, 0], surrogates[0].predict(front))


def test_validation_is_a_stratified_part_of_the_train_split():
    pre = Preprocess(image_size=16)
    val, unseen = load_validation("builtin:digits", pre, 0.1, seed=0)
    assert unseen is None  # nobody said what the fine-tuning read
    train = load_dataset("builtin:digits", "train", pre)
    counts, totals = torch.bincount(val.labels), torch.bincount(train.labels)
    assert len(val) == pytest.approx(0.1 * len(train), abs=10) and (counts >= 1).all()
    assert ((counts.float() / totals.float()) - 0.1).abs().max() < 0.02  # every class in proportion
    assert torch.equal(val.images, load_validation("builtin:digits", pre, 0.1, seed=0)[0].images)
    # drawn from the train images: every validation image is one of them
    flat = train.images.flatten(1)
    assert all((flat == v.flatten()).all(1).any() for v in val.images[:5])


def test_validation_avoids_the_images_the_zoo_fine_tuned_on():
    pre = Preprocess(image_size=16)
    seen = load_dataset("builtin:digits", "train", pre, limit=600, seed=3).images.flatten(1)
    val, unseen = load_validation("builtin:digits", pre, 0.1, seed=0, finetuning=TrainingPart(600, 3))
    assert unseen is True and len(val) == pytest.approx(0.1 * 1347, abs=10)  # a tenth of the split, all unseen
    assert not any((seen == v.flatten()).all(1).any() for v in val.images)
    # a fine-tuning that read the whole split leaves nothing unseen: a part of it, as without one
    whole, unseen = load_validation("builtin:digits", pre, 0.1, seed=0, finetuning=TrainingPart(4000, 0))
    assert unseen is False
    assert torch.equal(whole.images, load_validation("builtin:digits", pre, 0.1, seed=0)[0].images)


def test_a_held_out_part_is_never_trained_on_and_is_the_validation_set():
    pre = Preprocess(image_size=16)
    part = TrainingPart(None, 2, holdout=0.1)
    train = load_dataset("builtin:digits", "train", pre, seed=2, holdout=0.1)
    whole = load_dataset("builtin:digits", "train", pre)
    val, unseen = load_validation("builtin:digits", pre, 0.1, seed=0, finetuning=part)
    assert unseen is True and len(train) + len(val) == len(whole)  # every image is in exactly one of them
    flat = train.images.flatten(1)
    assert not any((flat == v.flatten()).all(1).any() for v in val.images)
    assert (torch.bincount(val.labels) >= 13).all()  # stratified: about a tenth of every class
    # a limit draws from what the holdout leaves; a smaller validation fraction is a part of the holdout
    limited = load_dataset("builtin:digits", "train", pre, limit=500, seed=2, holdout=0.1)
    assert len(limited) == 500 and not any((limited.images.flatten(1) == v.flatten()).all(1).any() for v in val.images)
    small, _ = load_validation("builtin:digits", pre, 0.05, seed=0, finetuning=part)
    assert len(small) == pytest.approx(0.05 * len(whole), abs=10)
    assert all((val.images.flatten(1) == v.flatten()).all(1).any() for v in small.images)
    with pytest.raises(DatasetError, match="held-out fraction"):
        load_dataset("builtin:digits", "train", pre, holdout=1.0)
    with pytest.raises(DatasetError, match="leaves class index 1 without a training image"):
        TrainingPart(holdout=0.1).indices(np.array([0, 0, 0, 1, 2, 2]))


def test_pick_rules_read_the_predicted_metrics():
    table = MemberTable(torch.full((3, 2), 0.5), torch.tensor([[0.9, 0.1], [0.6, 0.6], [0.1, 0.9]]))
    prefs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.6, 0.4]])
    assert weighted_sum(prefs, table).tolist() == [0, 1, 2, 1]
    assert tchebycheff(prefs, table).tolist() == [0, 1, 2, 1]


def test_map_family_through_the_cli_serves_its_members_and_resumes(quick_zoo, tmp_path, capsys, monkeypatch,
                                                                    assert_serves_materialised):
    args = ["train", "map", "--zoo", str(quick_zoo.root), "--population", "12", "--generations", "20",
            "--val-fraction", "0.2", "--device", "cpu"]
    main(args + ["--store", str(tmp_path / "a")])
    family = open_family(tmp_path / "a", capsys.readouterr().out.strip().splitlines()[-1])
    m = family.manifest
    assert m.kind == "point-set" and m.kind_params["pick"] == "weighted-sum" and m.kind_params["sense"] == "max"
    assert m.metrics["evaluations"]["design"] == default_budget(3)
    assert m.metrics["search_box"] == {"c_max": 1.0, "seed": 0, "real_evaluations": m.metrics["real_evaluations"]}
    assert set(m.metrics["surrogates"]) == set(family.tasks)
    assert set(m.metrics["seconds_by_stage"]) == {"merge", "evaluate", "fit", "nsga3"}
    members = m.kind_params["members"]
    assert len(members) >= 2 and all(len(x["predicted"]) == 3 and "real_accuracy.digits" in x["metrics"]
                                     for x in members)
    # a member is theta0 + sum_k c_k tau_k, and the preferences pick what weighted-sum says
    prefs = torch.stack([from_weights(w, family.tasks).tensor() for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1])])
    predicted = torch.tensor([x["predicted"] for x in members])
    picked = family.body.member_weights.pick(prefs)
    assert picked.tolist() == (prefs @ predicted.T).argmax(1).tolist()
    assert_serves_materialised(family, prefs, torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    # served at the preference asked: the coefficients the surrogates' weighted sum picks, never worse (as
    # predicted) than the member the same rule picks
    rule = m.kind_params["at_preference"]
    assert rule["rule"] == "surrogate" and rule["scalarisation"] == "weighted-sum" and len(rule["weights"]) == 3
    surrogates = family.body.member_weights.params.at_preference.surrogates
    made = np.array(family.resolve(prefs))
    coefficients = np.array([x["coefficients"] for x in members])
    assert (made >= 0).all() and (made <= 1.0).all()
    for p, c, i in zip(prefs.double().numpy(), made, picked.tolist()):
        assert surrogates.predict(c[None])[0] @ p >= surrogates.predict(coefficients[i][None])[0] @ p - 1e-3

    # killed after 7 evaluations: the rerun with --resume evaluates only the rest of the design
    calls = []
    real = map_family.CoefficientEvaluator.__call__

    def counted(self, c, tasks=None):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(self, c, tasks)

    monkeypatch.setattr(map_family.CoefficientEvaluator, "__call__", counted)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--store", str(tmp_path / "b")])
    calls.clear()
    monkeypatch.setattr(map_family.CoefficientEvaluator, "__call__",
                        lambda self, c, tasks=None: (calls.append(1), real(self, c, tasks))[1])
    main(args + ["--store", str(tmp_path / "b"), "--resume"])
    resumed = open_family(tmp_path / "b", capsys.readouterr().out.strip().splitlines()[-1])
    design = design_points(3, default_budget(3), 1.0, "sobol", seed=0)
    new = [x for x in members if not np.isclose(design, x["coefficients"], atol=1e-9).all(1).any()]
    assert len(calls) == default_budget(3) - 7 + len(new)  # the rest of the design, then the front
    assert resumed.manifest.kind_params == m.kind_params


def test_map_refuses_a_budget_below_the_surrogates_size(quick_zoo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "map", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--budget", "5"])
    assert "give --budget 10 or more (default 20)" in capsys.readouterr().err


def test_bayesian_sampling_goes_where_the_surrogate_is_wrong():
    from trainer.families.map.adaptive import allocate, bin_directions, bin_scores, bins_of, sample_near
    k = 2
    directions = bin_directions(k)
    first, middle, second = (int(np.argmin(np.abs(directions - d).sum(1))) for d in ([1, 0], [0.5, 0.5], [0, 1]))
    assert bins_of(np.array([[0.9, 0.1], [0.3, 0.3], [0.0, 0.0], [0.1, 0.8]]), directions).tolist() == \
        [first, middle, middle, second]
    rng = np.random.default_rng(0)
    near = sample_near(directions[first], 50, 0.8, rng)
    assert near.min() >= 0 and near.max() <= 0.8 + 1e-12
    assert (bins_of(near[near.sum(1) > 0.05], directions) == first).mean() > 0.8
    # a metric with a kink the quadratic cannot follow near (0, 1): that bin scores the highest
    c = design_points(k, 24, 1.0, "sobol", seed=0)
    y = link(c[:, 0] - c[:, 1] + 4 * np.maximum(c[:, 1] - c[:, 0] - 0.5, 0) ** 0.5, "accuracy")
    surrogate = fit_surrogate(c, y, "accuracy")
    scores = bin_scores(c, y[:, None], [surrogate], "accuracy", directions, rng)
    assert scores.argmax() == second
    counts = allocate(scores, 30, rng, temperature=1.0)
    assert counts.sum() == 30 and counts[second] == counts.max()


def test_bmap_spends_its_budget_in_rounds(quick_zoo, tmp_path, capsys):
    main(["train", "bmap", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--rounds", "2",
          "--population", "12", "--generations", "20", "--device", "cpu"])
    family = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    metrics = family.manifest.metrics
    assert metrics["evaluations"]["design"] == default_budget(3) and metrics["initial"] == 10 + 3
    assert [r["added"] for r in metrics["rounds"]] == [3, 4]
    assert family.manifest.kind_params["pick"] == "weighted-sum" and family.manifest.method == "bmap"


def test_map_bench_on_a_quick_zoo(quick_zoo, tmp_path):
    """bench/map_bench.py end to end (the figures come from the demo zoo; here, that it runs)."""
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from bench import map_bench
    out = map_bench.main(["--zoo", str(quick_zoo.root), "--population", "12", "--generations", "10", "--device",
                          "cpu", "--sub-zoos", "2=3", "--out-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    assert set(data["results"]) == {"map", "bmap", "map-fewer", "bmap-fewer", "direct-search", "direct-search-all",
                                    "ta-pref"}
    assert data["results"]["bmap-fewer"]["evaluations"]["design"] == 15  # 3/4 of 20
    assert all(r["hypervolume"] > 0 for r in data["results"].values())
    assert set(data["quality_bar"]) >= {"r2_at_least_0.9", "map_hv_at_least_direct_search", "map_hv_at_least_ta_pref"}
    two = data["ground_truth"]["2-task"]
    assert two["tasks"] == quick_zoo.tasks[:2] and two["models"]["ground-truth grid:3"]["igd_plus"] == 0.0
    assert set(two["models"]) == {"map (weighted-sum)", "map: real", "map: predicted", "map (tchebycheff)", "ta-pref",
                                  "direct-search", "ground-truth grid:3"}
    assert 0 < two["map_real_over_grid_hv"]


def test_nested_tree_merges_the_most_alike_tasks_first():
    from trainer.families.map.nested import task_tree
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 50))
    vectors = np.stack([base[0], base[1], base[0] + 0.1 * rng.normal(size=50), base[1] + 0.1 * rng.normal(size=50)])
    tree = task_tree(vectors @ vectors.T)
    assert sorted(sorted(c.tasks) for c in tree.children) == [[0, 2], [1, 3]]
    assert tree.names(["a", "b", "c", "d"]) in ([["a", "c"], ["b", "d"]], [["c", "a"], ["d", "b"]],
                                                [["b", "d"], ["a", "c"]], [["d", "b"], ["c", "a"]])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        task_tree(np.ones((1, 1)))


def test_nested_search_follows_the_preference_and_reuses_the_leaf_pairs():
    """On a known metric (task t best at c_t = 1, hurt by the other tasks' c), the tree's model for a
    preference leans to the preferred tasks, stays in the box, and the leaf pairs run once."""
    from trainer.families.map.nested import NestedSearch, Node
    k = 4
    calls = []

    def evaluate(points, tasks):
        calls.append(list(tasks))
        out = [[link(3 * p[t] - 1.5 * (p.sum() - p[t]) ** 2 - 2 * (p[t] - 1) ** 2, "accuracy") for t in tasks]
               for p in points]
        return np.array(out)

    tree = Node((0, 1, 2, 3), (Node((0, 1), (Node((0,)), Node((1,)))), Node((2, 3), (Node((2,)), Node((3,))))))
    search = NestedSearch(evaluate, "accuracy", 12, 1.0, "sobol", 20, 40, 0)
    first = search.coefficients(tree, np.array([0.7, 0.1, 0.1, 0.1]))
    third = search.coefficients(tree, np.array([0.1, 0.1, 0.7, 0.1]))
    assert first.argmax() == 0 and third.argmax() == 2
    assert ((0 <= first) & (first <= 1 + 1e-9)).all() and ((0 <= third) & (third <= 1 + 1e-9)).all()
    vertex = search.coefficients(tree, np.eye(k)[1])  # a vertex: about its own fine-tuned model
    assert vertex[1] > 0.9 and np.delete(vertex, 1).max() < 0.1
    leaf_pairs = [c for c in calls if len(c) == 2]
    assert sorted(map(tuple, leaf_pairs)) == [(0, 1), (2, 3)]  # once each, for three preferences


def test_nmap_family_through_the_cli_and_its_cost(quick_zoo, tmp_path, capsys):
    main(["train", "nmap", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--points",
          "grid=1,random=0", "--population", "12", "--generations", "20", "--device", "cpu"])
    family = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    m = family.manifest
    members = m.kind_params["members"]
    assert m.method == "nmap" and m.kind_params["pick"] == "nearest"
    assert len(members) == 7  # the 3 vertices, the equal and the three 0.7 preferences
    flat = json.dumps(m.metrics["tree"])
    assert all(f'"{t}"' in flat for t in family.tasks)
    cost = m.metrics["evaluations"]
    assert cost["members"] == 7 and cost["pairwise_task_evaluations"] >= 2 * 12  # at least the two pair levels
    assert cost["pairwise_full_equivalent"] == round(cost["pairwise_task_evaluations"] / 3, 2)
    for x in members:  # each member is the tree's model for its own preference, inside the box
        assert all(0 <= c <= 1 + 1e-9 for c in x["coefficients"]) and "real_accuracy.digits" in x["metrics"]
    vertex = next(x for x in members if x["preference"] == [1.0, 0.0, 0.0])
    assert np.argmax(vertex["coefficients"]) == 0


def test_front_shows_map_members_predicted_direct_search_and_igd_against_the_grid(quick_zoo, tmp_path, capsys):
    """`pmerge front --ground-truth grid:N` on a 3-task MAP family, through the CLI."""
    main(["train", "map", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--population", "12",
          "--generations", "20", "--device", "cpu"])
    family = open_family(tmp_path, capsys.readouterr().out.strip().splitlines()[-1])
    spent = family.manifest.metrics["real_evaluations"]
    members = family.manifest.kind_params["members"]
    assert spent == default_budget(3) + len(members)
    out = tmp_path / "front"
    main(["front", "--store", str(tmp_path), "--out", str(out), "--grid", "1", "--random", "0", "--baselines",
          "ta-pref", "--ground-truth", "grid:3", "--test-limit", "40", "--device", "cpu"])
    printed = capsys.readouterr().out
    front = json.loads((out / "front.json").read_text())
    models = front["models"]
    assert set(models) == {"family", "family: members", "family: predicted", "ta-pref", "direct-search",
                           "ground-truth grid:3"}
    assert len(models["family: members"]["points"]) == len(members)
    from models_store.fronts import read_front
    kept = read_front(tmp_path, family.family_id)  # a point-set's members are kept with its front
    assert [p.preference for p in kept.members] == [p["canonical"] for p in models["family: members"]["points"]]
    predicted = [p["accuracy"] for p in models["family: predicted"]["points"]]
    assert [[a[t] for t in family.tasks] for a in predicted] == [x["predicted"] for x in members]
    assert len(models["direct-search"]["points"]) == spent  # MAP's peer at the same budget
    grid = models["ground-truth grid:3"]
    assert len(grid["points"]) == 27 and grid["igd_plus"] == 0.0
    assert all(m["igd_plus"] >= 0 for m in models.values()) and set(front["igd_plus"]) == set(models)
    # the IGD+ of a model is pymoo's, on 1 - accuracy, of its non-dominated points against the grid's
    from pymoo.indicators.igd_plus import IGDPlus
    errors = lambda m: np.array([[1 - p["accuracy"][t] for t in family.tasks]  # noqa: E731
                                 for p in m["points"] if p["on_front"]])
    assert models["ta-pref"]["igd_plus"] == pytest.approx(IGDPlus(errors(grid))(errors(models["ta-pref"])))
    assert "| ground-truth grid:3 |" in printed and "IGD+" in printed
    # the sets of points are not rows of the per-preference tables
    assert set(front["equal"]["accuracy"]) == {"family", "ta-pref"}


def test_ground_truth_is_for_three_tasks_at_most_and_direct_search_can_be_off():
    from trainer.front import FrontConfig, coefficient_sets
    with pytest.raises(Exception, match="K <= 3 tasks, this family has 4"):
        coefficient_sets(FrontConfig(ground_truth="grid:3"), [], 4)
    with pytest.raises(ValueError):
        FrontConfig(ground_truth="grid:1")
    sets = coefficient_sets(FrontConfig(ground_truth="grid:4", direct_search=5, c_max=0.5), [], 2)
    assert len(sets["direct-search"]) == 5 and sets["direct-search"].max() <= 0.5
    assert len(sets["ground-truth grid:4"]) == 16 and sets["ground-truth grid:4"].max() == 0.5
    assert coefficient_sets(FrontConfig(), [], 3) == {}


def test_a_zoo_of_some_tasks_shares_the_files(quick_zoo, tmp_path, capsys):
    from models_store.zoo import Zoo
    out = tmp_path / "two"
    main(["zoo", "--from", str(quick_zoo.root), "--only", "glyphs,digits", "--out", str(out)])
    sub = Zoo(out)
    assert sub.tasks == ["glyphs", "digits"] and sub.manifest.architecture == quick_zoo.manifest.architecture
    assert (out / "digits" / "finetuned.safetensors").read_bytes() == \
        (quick_zoo.root / "digits" / "finetuned.safetensors").read_bytes()
    assert not (out / "shapes").exists()
    with pytest.raises(SystemExit):
        main(["zoo", "--from", str(quick_zoo.root), "--only", "digits,nope", "--out", str(tmp_path / "bad")])
    assert "has no task 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["zoo", "--from", str(quick_zoo.root), "--only", "digits", "--out", str(out)])
    assert "already holds a zoo" in capsys.readouterr().err


def test_validation_sets_say_when_the_fine_tuning_saw_every_validation_image(quick_zoo, capsys):
    from types import SimpleNamespace

    from trainer.families.validation import ValidationConfig, validation_sets

    def sets(train_limit, **held):
        config = {"train_limit": train_limit, "seed": 0} | held
        manifest = quick_zoo.manifest.model_copy(update={"metrics": {"config": config}})
        ctx = SimpleNamespace(zoo=SimpleNamespace(tasks=quick_zoo.tasks, manifest=manifest, task=quick_zoo.task))
        validation_sets(ctx, ValidationConfig())
        return capsys.readouterr().err

    assert f"note: the validation images of {', '.join(quick_zoo.tasks)} are images their fine-tuned towers " \
           f"trained on" in sets(10 ** 6)
    assert "are images their fine-tuned towers trained on" in sets(None)  # a zoo from before --holdout
    assert "are images their fine-tuned towers trained on" in sets(None, holdout=0.0)
    assert sets(None, holdout=0.1) == ""  # `pmerge zoo`'s default holds a tenth of every train split out
    assert sets(300) == ""  # every task's train split has images its fine-tuning did not read


def test_a_map_family_from_before_the_typed_search_box_gives_the_same_box():
    """Families published before the search box keep c_max in their hyperparameters and the budget in
    their metrics; those published with it at the manifest's top (`search`) read it into their metrics;
    front reads the same box from each."""
    from types import SimpleNamespace

    from models_store.family import FamilyManifest
    from models_store.preprocess import Preprocess
    from models_store.zoo import TaskInfo
    from trainer.coefficients import SearchBox
    from trainer.front import search_box

    typed = SearchBox(c_max=0.8, real_evaluations=42, seed=3)
    new = SimpleNamespace(manifest=SimpleNamespace(metrics=typed.metrics(), hyperparameters={}))
    top = FamilyManifest.model_validate({
        "family_id": "f", "created": "now", "method": "map", "architecture": {}, "preprocess": Preprocess(image_size=16),
        "tasks": [TaskInfo(name="a", classes=["x", "y"])], "metrics": {"r2": 1}, "search": typed.model_dump()})
    old = SimpleNamespace(manifest=SimpleNamespace(metrics={"real_evaluations": 42},
                                                   hyperparameters={"c_max": 0.8, "seed": 3}))
    plain = SimpleNamespace(manifest=SimpleNamespace(metrics={}, hyperparameters={}))
    assert search_box([plain, new]) == search_box([old]) == search_box([SimpleNamespace(manifest=top)]) == typed
    assert search_box([plain]) is None and top.metrics["r2"] == 1 and "search" not in top.model_dump()
