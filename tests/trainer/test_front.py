"""Pareto fronts and preferences: hypervolume, simplex sets, preference-aware baselines, and
`pmerge merge --pref`, `pmerge front`, `pmerge select` end to end on the quick micro zoo and family."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from models_store.checkpoint import load_state_dict, save_state_dict
from models_store.preference import Preference, from_weights
from models_store.store import open_family
from models_store.cli import main
from trainer.front import FrontConfig, front_preferences
from trainer.hypervolume import hypervolume, non_dominated
from trainer.methods import MergeContext, get_method
from trainer.methods.preference import task_weights
from models_store.simplex import simplex_grid

# ---- hypervolume and dominance ---------------------------------------------------------------


def test_hypervolume_2d_by_hand():
    # boxes [0,1]x[0,2] and [0,2]x[0,1]: 2 + 2 - 1 overlap
    assert hypervolume([(1, 2), (2, 1)]) == pytest.approx(3.0)
    # a dominated point and a duplicate add nothing
    assert hypervolume([(1, 2), (2, 1), (0.5, 0.5), (1, 2)]) == pytest.approx(3.0)
    # staircase 0.9,0.2 / 0.6,0.5 / 0.3,0.8: 0.9*0.2 + 0.6*0.3 + 0.3*0.3
    assert hypervolume([(0.3, 0.8), (0.9, 0.2), (0.6, 0.5)]) == pytest.approx(0.45)
    assert hypervolume([(2, 3)], reference=(1, 1)) == pytest.approx(2.0)
    assert hypervolume([(0.0, 0.7)]) == 0.0  # on the reference in one objective: an empty box
    assert hypervolume([]) == 0.0


def test_hypervolume_3d_and_4d_by_hand():
    assert hypervolume([(1, 1, 1)]) == pytest.approx(1.0)
    # unit cube plus [0,2]x[0,.5]x[0,.5] minus their overlap .25
    assert hypervolume([(1, 1, 1), (2, 0.5, 0.5)]) == pytest.approx(1.25)
    # three boxes of volume 2: 6 - 3 pairwise overlaps of 1 + the triple overlap 1
    three = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]
    assert hypervolume(three) == pytest.approx(4.0)
    assert hypervolume(three + [(1, 1, 1), (2, 1, 1), (0.5, 0.2, 0.1)]) == pytest.approx(4.0)
    assert hypervolume([(0.5, 0.4, 0.3, 0.2)]) == pytest.approx(0.012)
    assert hypervolume([(1, 1, 1, 1), (2, 1, 1, 0.5)]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="same number of objectives"):
        hypervolume([(1, 2), (1, 2, 3)])


def test_non_dominated_keeps_duplicates_and_drops_dominated():
    points = [(1, 2), (2, 1), (0.5, 0.5), (1, 2), (1, 1)]
    assert non_dominated(points) == [True, True, False, True, False]


# ---- preference sets -------------------------------------------------------------------------


def test_simplex_grid_counts_and_vertices():
    grid = simplex_grid(["a", "b", "c"], 3)
    assert len(grid) == 10 and len({p.canonical for p in grid}) == 10
    assert all(math.isclose(sum(p.weights), 1.0, abs_tol=1e-5) for p in grid)
    for vertex in ("a:1,b:0,c:0", "a:0,b:1,c:0", "a:0,b:0,c:1"):
        assert vertex in {p.canonical for p in grid}
    assert len(simplex_grid(["a", "b", "c", "d"], 3)) == 20
    with pytest.raises(ValueError, match="at least 1 division"):
        simplex_grid(["a", "b"], 0)


def test_front_preferences_always_hold_equal_and_priority_points():
    prefs = [p.canonical for p in front_preferences(["a", "b", "c"], FrontConfig(grid=3, random=4, seed=1))]
    assert len(prefs) == len(set(prefs)) == 10 + 3 + 4  # equal is on the grid; 0.7/0.15/0.15 are not
    assert {"a:0.333333,b:0.333333,c:0.333333", "a:0.7,b:0.15,c:0.15", "a:0.15,b:0.15,c:0.7"} <= set(prefs)
    again = [p.canonical for p in front_preferences(["a", "b", "c"], FrontConfig(grid=3, random=4, seed=1))]
    assert again == prefs  # seeded


# ---- preference-aware baselines --------------------------------------------------------------

PRETRAINED = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
VECTORS = {"a": {"w": torch.tensor([[1.0, -2.0], [0.5, 0.0]])}, "b": {"w": torch.tensor([[3.0, 1.0], [-0.5, 0.0]])}}


def context() -> MergeContext:
    return MergeContext(pool=SimpleNamespace(pretrained=PRETRAINED, task_vectors=VECTORS, tasks=list(VECTORS)),
                        progress=False)


def pref(*values: float) -> Preference:
    return from_weights(values, list(VECTORS))


def test_task_arithmetic_with_preference():
    ta = get_method("task-arithmetic")
    plain = ta(context(), ta.config(scale=0.3))["w"]
    assert torch.allclose(ta(context(), ta.config(scale=0.3, preference=pref(0.5, 0.5)))["w"], plain)
    assert torch.allclose(ta(context(), ta.config(scale=0.3, preference=pref(7, 7)))["w"], plain)  # normalised
    # one-hot on a: theta0 + 0.3 * 2 * tau_a
    one_hot = ta(context(), ta.config(scale=0.3, preference=pref(1, 0)))["w"]
    assert torch.allclose(one_hot, torch.tensor([[1.6, 0.8], [3.3, 4.0]]))
    # 0.75 / 0.25: weights 1.5, 0.5 -> theta0 + 0.2 * (1.5 tau_a + 0.5 tau_b)
    skewed = ta(context(), ta.config(scale=0.2, preference=pref(0.75, 0.25)))["w"]
    assert torch.allclose(skewed, torch.tensor([[1.6, 1.5], [3.1, 4.0]]))


def test_preference_weights_convention_and_errors():
    abc = ["a", "b", "c"]
    assert task_weights(None, abc) == [1.0, 1.0, 1.0]
    assert task_weights(from_weights([0.2, 0.2, 0.2], abc), abc) == [1.0, 1.0, 1.0]  # exact after rounding
    assert task_weights(from_weights([3, 1], ["a", "b"]), ["a", "b"]) == pytest.approx([1.5, 0.5])
    with pytest.raises(ValueError, match="over tasks a, b; the zoo's are a, b, c"):
        task_weights(from_weights([1, 1], ["a", "b"]), abc)
    # one rule: only the parser's Preference is taken, never raw numbers that skip its checks
    for raw in ([-1.0, 2.0], [0.5, 0.5]):
        with pytest.raises(ValueError, match="instance of Preference"):
            get_method("adamerging").config(preference=raw)
    config = get_method("adamerging").config(preference=from_weights([3, 1], ["a", "b"]))
    assert '"preference":"a:0.75,b:0.25"' in config.model_dump_json()


def test_merge_pref_through_the_cli(quick_zoo, tmp_path, capsys):
    root = str(quick_zoo.root)
    main(["merge", "task-arithmetic", "--zoo", root, "--out", str(tmp_path / "plain.safetensors")])
    main(["merge", "task-arithmetic", "--zoo", root, "--pref", "1,1,1",
          "--out", str(tmp_path / "equal.safetensors")])
    main(["merge", "task-arithmetic", "--zoo", root, "--pref", "digits:1",
          "--out", str(tmp_path / "digits.safetensors")])
    assert "at preference digits:1,shapes:0,glyphs:0" in capsys.readouterr().out
    plain, equal, digits = (load_state_dict(tmp_path / f"{n}.safetensors") for n in ("plain", "equal", "digits"))
    pretrained, tuned = quick_zoo.pretrained(), quick_zoo.finetuned("digits")
    for k in plain:
        assert torch.allclose(plain[k], equal[k], atol=1e-6), k
    k = "conv1.weight"
    assert torch.allclose(digits[k], pretrained[k] + 0.3 * 3 * (tuned[k] - pretrained[k]), atol=1e-5)
    with pytest.raises(SystemExit):
        main(["merge", "ties", "--zoo", root, "--pref", "1,1,1", "--out", str(tmp_path / "x.safetensors")])
    assert "pmerge merge: error: method ties takes no --pref" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["merge", "task-arithmetic", "--zoo", root, "--pref", "nope:1",
              "--out", str(tmp_path / "x.safetensors")])
    assert "unknown task 'nope'" in capsys.readouterr().err


# ---- pmerge front ----------------------------------------------------------------------------


def test_front_end_to_end(quick_store, tmp_path, capsys):
    store, family_id = quick_store
    out = tmp_path / "front"
    main(["front", "--store", str(store), "--out", str(out), "--grid", "2", "--random", "1",
          "--baselines", "ta-pref,adamerging-pref", "--baseline-steps", "2", "--test-limit", "40", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "| family |" in printed and "hypervolume" in printed
    front = json.loads((out / "front.json").read_text())
    assert front["family_id"] == family_id and front["tasks"] == ["digits", "shapes", "glyphs"]
    assert len(front["preferences"]) == 6 + 1 + 3 + 1  # grid, equal, 0.7 on each task, one random
    assert set(front["models"]) == {"family", "ta-pref", "adamerging-pref"}
    for name, model in front["models"].items():
        assert [p["canonical"] for p in model["points"]] == front["preferences"]
        for p in model["points"]:
            assert all(0.0 <= a <= 1.0 for a in p["accuracy"].values())
            assert p["average"] == pytest.approx(sum(p["accuracy"].values()) / 3)
        assert any(p["on_front"] for p in model["points"])
        assert model["hypervolume"] > 0 and front["hypervolume"][name] == model["hypervolume"]
    assert front["equal"]["preference"] == "digits:0.333333,shapes:0.333333,glyphs:0.333333"
    assert set(front["equal"]["accuracy"]) == set(front["models"])
    assert front["priority"]["shapes"]["preference"] == "digits:0.15,shapes:0.7,glyphs:0.15"
    assert (out / "front.md").read_text().startswith("# Pareto front of family " + family_id)
    # beside its quality, what the family costs: its files on disk, its bytes on the device (a baseline: none)
    family_dir = store / family_id
    assert front["models"]["family"]["disk_bytes"] == sum(f.stat().st_size for f in family_dir.iterdir())
    resident = front["models"]["family"]["resident_bytes"]
    assert 0 < resident["bfloat16"] < resident["float32"]
    assert front["models"]["ta-pref"]["disk_bytes"] is None and front["models"]["ta-pref"]["resident_bytes"] is None
    assert f"| {front['models']['family']['disk_bytes'] / 1e6:.2f} | {resident['bfloat16'] / 1e6:.2f} |" in printed
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    # the family's own points are kept beside it in the store, for GET /families/{id}/front and /ui
    from models_store.fronts import read_front
    kept = read_front(store, family_id)
    assert kept.tasks == front["tasks"] and kept.test_limit == 40 and kept.members is None
    assert kept.hypervolume == front["hypervolume"]["family"]
    assert [(p.preference, p.accuracy, p.on_front) for p in kept.points] == [
        (p["canonical"], p["accuracy"], p["on_front"]) for p in front["models"]["family"]["points"]]

    # what each model gives up, against references measured here independently on the same images
    from models_store.zoo import Zoo
    from trainer.evaluate import Evaluator
    from trainer.pool import ModelPool
    from trainer.taskpool import TaskPool
    zoo = Zoo(open_family(store, family_id).manifest.zoo)
    test = TaskPool(zoo, test_limit=40).test
    evaluator = Evaluator(zoo.manifest.architecture, zoo.heads, test, torch.device("cpu"))
    finetuned = {t: evaluator.accuracy(zoo.finetuned(t), [t])[t] for t in zoo.tasks}
    ctx = MergeContext(pool=ModelPool(zoo), unlabeled={t: test[t].images for t in zoo.tasks}, progress=False)
    merges = {m: sum(evaluator.accuracy(get_method(m)(ctx)).values()) / 3
              for m in ("task-arithmetic", "ties", "tsv-m", "iso-c", "iso-cts")}
    assert front["references"]["finetuned"] == pytest.approx(finetuned)
    assert front["references"]["merges"] == pytest.approx(merges)
    assert set(front["trade_offs"]) == set(front["models"])
    for name, model in front["models"].items():
        points = {p["canonical"]: p for p in model["points"]}
        ratios = {t: points[from_weights([float(u == t) for u in zoo.tasks], zoo.tasks).canonical]["accuracy"][t]
                  / finetuned[t] for t in zoo.tasks}
        given_up = front["trade_offs"][name]
        assert given_up["worst_vertex_task"] == min(ratios, key=ratios.get)
        assert given_up["vertex_over_finetuned"] == pytest.approx(min(ratios.values()))
        assert given_up["best_merge"] == max(merges, key=merges.get)
        assert given_up["equal_over_best_merge"] == pytest.approx(
            points[front["equal"]["preference"]]["average"] / max(merges.values()))
    assert "## What each model gives up" in printed


def test_front_rejects_bad_inputs(quick_store, tmp_path, capsys):
    store, _ = quick_store
    base = ["front", "--store", str(store), "--out", str(tmp_path / "f")]
    with pytest.raises(SystemExit):
        main(base + ["--baselines", "ta-pref,magic"])
    err = capsys.readouterr().err
    # one line, the reason first, no pydantic boilerplate (it printed a raw ValidationError)
    assert err.strip() == "pmerge front: error: --baselines: unknown baseline 'magic'; known: ta-pref, adamerging-pref, got ['ta-pref', 'magic']"
    with pytest.raises(SystemExit):
        main(base + ["--grid", "0"])
    assert "--grid: Input should be greater than or equal to 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--zoo", str(tmp_path / "no-zoo")])
    assert "no-zoo (needed by the baselines) does not exist" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


# ---- pmerge select ---------------------------------------------------------------------------


def test_select_picks_the_lowest_entropy_preference(quick_store, tmp_path, capsys):
    store, family_id = quick_store
    report = tmp_path / "select.json"
    main(["select", "--store", str(store), "--data", "builtin:digits", "--task", "digits", "--samples", "3",
          "--limit", "40", "--json", str(report), "--device", "cpu"])
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    trials = {t["preference"]: t["entropy"] for t in result["trials"]}
    assert len(trials) == 1 + 3 + 3  # equal, vertices, samples
    best = result["selected"]["preference"]
    assert trials[best] == min(trials.values()) == result["selected"]["entropy"]
    assert f"selected preference: {best}" in printed and "lowest" in printed

    # the same head given as a file in the zoo head format gives the same selection
    head = open_family(store, family_id).heads["digits"]
    save_state_dict(tmp_path / "head.safetensors", {"weight": head.weight})
    main(["select", "--store", str(store), "--data", "builtin:digits", "--head", str(tmp_path / "head.safetensors"),
          "--samples", "3", "--limit", "40"])
    assert f"selected preference: {best}" in capsys.readouterr().out


def test_select_rejects_bad_heads_and_defaults_to_the_familys(quick_store, tmp_path, capsys):
    store, _ = quick_store
    base = ["select", "--store", str(store), "--data", "builtin:digits", "--samples", "1", "--limit", "8"]
    main(base)  # no head of the new task: the family's heads, averaged (as POST /select)
    assert "selected preference: " in capsys.readouterr().out
    save_state_dict(tmp_path / "wide.safetensors", {"weight": torch.randn(4, 99)})
    with pytest.raises(SystemExit):
        main(base + ["--head", str(tmp_path / "wide.safetensors")])
    assert "the head has dimension 99 but the family's tower outputs 16 features" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--task", "cars"])
    assert "has no task 'cars'" in capsys.readouterr().err
