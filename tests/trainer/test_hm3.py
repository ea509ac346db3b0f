"""HM3 (seed 001): DARE-TIES, the policy and PPO, path rewards as the family serves them, and the
learner through the CLI (members, ablations, resume)."""
import json

import pytest
import torch

from models_store.cli import main
from models_store.preference import from_weights
from models_store.store import open_family
from models_store.tower import head_logits, load_tower
from trainer.families.hm3.learner import Hm3Config, member_preferences
from trainer.families.validation import validation_sets
from trainer.families.registry import LearnContext
from trainer.families.hm3.dare_ties import dare, dare_ties
from trainer.families.hm3.paths import Accuracies, PathEvaluator, validation_parts
from trainer.families.hm3.search import choose_paths
from trainer.families.hm3.policy import PathPolicy, PPOConfig, ppo_update, sample
from trainer.methods.ties import ties_preprocess


def test_dare_drops_at_its_rate_rescales_the_rest_and_is_seeded():
    vector = {"w": torch.ones(200, 500), "b": -torch.ones(1000)}
    out = dare(vector, 0.9, torch.Generator().manual_seed(1))
    kept = out["w"] != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005
    assert torch.all(out["w"][kept] == 10.0) and torch.all(out["b"][out["b"] != 0] == -10.0)
    again = dare(vector, 0.9, torch.Generator().manual_seed(1))
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_dare_ties_keeps_entries_of_one_elected_sign_with_a_mask_per_task():
    g = torch.Generator().manual_seed(0)
    vectors = {t: {"w": torch.randn(64, 64, generator=g)} for t in ("a", "b", "c")}
    out = dare_ties(vectors, 0.5, 100.0, seed=0)
    stacked = torch.stack([out[t]["w"] for t in out])
    signs = torch.sign(stacked)
    # wherever two tasks keep an entry, they agree in sign
    assert not ((signs == 1).any(0) & (signs == -1).any(0)).any()
    masks = [out[t]["w"] != 0 for t in out]
    assert not torch.equal(masks[0], masks[1])  # each task its own drop
    assert all(torch.equal(dare_ties(vectors, 0.0, 20.0, 0)[t]["w"], ties_preprocess(vectors, 20.0)[t]["w"]) for t in out)


def test_the_policy_starts_at_the_fine_tuned_model_of_a_vertex_and_ppo_finds_a_rewarded_path():
    torch.manual_seed(0)
    policy = PathPolicy(tasks=3, depth=3, sources=5, hidden=32, prior=2.0)  # merge, ft 1..3, skip
    assert policy.greedy(torch.eye(3)).tolist() == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    target = torch.tensor([4, 0, 2])
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        prefs = torch.distributions.Dirichlet(torch.ones(3)).sample((64,))
        paths, log_prob = sample(policy, prefs, g)
        rewards = (paths == target).float().mean(1)  # a part of the reward per right block
        ppo_update(policy, optimizer, prefs, paths, log_prob, rewards, PPOConfig())
    assert policy.greedy(torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])).tolist() == [target.tolist()] * 2


def quick_evaluator(zoo, cache_bytes: int = 1 << 30, allow_skip: bool = True) -> PathEvaluator:
    ctx = LearnContext(zoo=zoo, store=zoo.root.parent, progress=False)
    config = Hm3Config(val_fraction=0.2)
    val, _ = validation_parts(validation_sets(ctx, config), 40, 0)
    vectors = dare_ties(ctx.pool.task_vectors, 0.5, 20.0, 0)
    prefs = member_preferences(zoo.tasks, 4, 0)
    return PathEvaluator(ctx.pool, vectors, [[0.9 * w for w in p.weights] for p in prefs], val, allow_skip,
                         torch.device("cpu"), batch_size=32, cache_bytes=cache_bytes), val


def test_validation_parts_are_disjoint_seeded_and_the_search_part_at_most_half():
    from trainer.data import TaskData
    images = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1).expand(50, 3, 2, 2)
    val = {"a": TaskData(images, torch.arange(50) % 5, list("vwxyz")), "b": TaskData(images[:9], torch.zeros(9).long(), ["z"])}
    search, confirm = validation_parts(val, 40, seed=3)
    assert [len(search[t].labels) for t in val] == [25, 4] and [len(confirm[t].labels) for t in val] == [25, 5]
    ids = lambda d: set(d.images[:, 0, 0, 0].long().tolist())  # noqa: E731
    assert not ids(search["a"]) & ids(confirm["a"]) and ids(search["a"]) | ids(confirm["a"]) == set(range(50))
    assert ids(validation_parts(val, 40, seed=3)[0]["a"]) == ids(search["a"]) != ids(validation_parts(val, 40, 4)[0]["a"])
    with pytest.raises(ValueError, match="'b' has 1 validation image"):
        validation_parts({"b": TaskData(images[:1], torch.zeros(1).long(), ["z"])}, 40, 0)


class Scored:
    """An evaluator of known per-image results: {path: per task, which images are right}."""
    depth = 2

    def __init__(self, right: dict):
        self.right = right

    def __call__(self, member, path):
        correct = [torch.tensor(c, dtype=torch.bool) for c in self.right[path]]
        return Accuracies([float(c.float().mean()) for c in correct], 2, correct)

    def seen(self, member):
        return {p: self(member, p) for p in self.right}


def test_a_path_is_chosen_only_when_its_gain_holds_on_the_confirmation_images():
    start, lucky, real = (0, 0), (1, 1), (2, 0)
    search = Scored({start: [[1, 0, 0, 0]], lucky: [[1, 1, 1, 1]], real: [[1, 1, 0, 0]]})
    prefs = torch.tensor([[1.0]])
    n = 400  # confirmation: lucky no better than the start, real better by 0.1 (40 images of 400)
    confirm = Scored({start: [[1] * 200 + [0] * 200], lucky: [[1] * 200 + [0] * 200],
                      real: [[1] * 240 + [0] * 160]})
    assert choose_paths(search, confirm, prefs, 0.0, None, finalists=4, margin=1.0)[1] == [real]
    gain, error = confirm(0, real).gain_over(confirm(0, start), [1.0])
    assert gain == pytest.approx(0.1) and error == pytest.approx((0.1 * 0.9 / n) ** 0.5)
    # one finalist (the lucky one) and nothing is confirmed: the member keeps its merge
    assert choose_paths(search, confirm, prefs, 0.0, None, finalists=1, margin=1.0)[1] == [start]
    # a margin the real gain does not clear (0.1 < 7 standard errors of 0.015)
    assert choose_paths(search, confirm, prefs, 0.0, None, finalists=4, margin=7.0)[1] == [start]


def test_the_prefix_cache_changes_no_reward_and_saves_blocks(quick_zoo):
    paths = [(0, 0), (0, 1), (0, 4), (2, 1), (2, 4), (4, 4)]
    cached, _ = quick_evaluator(quick_zoo)
    uncached, _ = quick_evaluator(quick_zoo, cache_bytes=0)
    for member in range(4):
        for p in paths:
            assert cached(member, p).per_task == uncached(member, p).per_task
    assert cached.timer.counts["blocks_run"] < uncached.timer.counts["blocks_run"] == \
        uncached.timer.counts["blocks_needed"]
    assert cached(0, (4, 4)).blocks == 0 and cached(0, (1, 4)).blocks == 1


def test_hm3_through_the_cli_serves_its_paths_and_never_makes_a_member_worse(quick_zoo, tmp_path, capsys,
                                                                             assert_serves_materialised):
    args = ["train", "hm3", "--zoo", str(quick_zoo.root), "--members", "6", "--episodes", "96",
            "--allow-skip", "--depth-penalty", "0.001", "--search-images", "40", "--val-fraction", "0.2",
            "--ppo", "batch=32", "--drop", "0.5", "--device", "cpu"]
    main(args + ["--store", str(tmp_path / "a")])
    family = open_family(tmp_path / "a", capsys.readouterr().out.strip().splitlines()[-1])
    m = family.manifest
    assert m.kind == "point-set" and m.kind_params["pick"] == "nearest" and m.kind_params["merge_vectors"]
    members = m.kind_params["members"]
    assert len(members) == 6 and [x["preference"] for x in members[:4]] == [[1, 0, 0], [0, 1, 0], [0, 0, 1],
                                                                              [0.333333] * 3]
    assert all(x["metrics"]["val_objective"] - 0.001 * x["metrics"]["blocks_run"]
               >= x["metrics"]["start_val_objective"] - 0.001 * 2 for x in members)
    assert {b for x in members for b in x["blocks"]} - {"merge"}  # some block from elsewhere: a real check below
    assert set(m.metrics["seconds_by_stage"]) == {"merge", "evaluate", "policy"}
    assert 6 <= m.metrics["path_evaluations"] <= 96 + 12
    # the member's validation accuracies are those of its materialised tower (the download)
    ctx = LearnContext(zoo=quick_zoo, store=tmp_path, progress=False)
    val, confirm = validation_parts(validation_sets(ctx, Hm3Config(val_fraction=0.2)), 40, 0)
    assert m.metrics["confirmation_images_per_task"] == {t: len(confirm[t].labels) for t in family.tasks}
    for x in members:
        tower = load_tower(m.architecture, family.materialize(from_weights(x["preference"], family.tasks)))
        for t in family.tasks:
            with torch.no_grad():
                logits = head_logits(tower(val[t].images), family.heads[t].weight, family.heads[t].bias)
            assert (logits.argmax(-1) == val[t].labels).float().mean().item() == pytest.approx(
                x["metrics"][f"val_accuracy.{t}"], abs=1 / len(val[t].labels) + 1e-9)
    prefs = torch.stack([from_weights(w, family.tasks).tensor()
                         for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7])])
    assert_serves_materialised(family, prefs, torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)))

    main(args + ["--store", str(tmp_path / "n"), "--search", "none"])
    none = open_family(tmp_path / "n", capsys.readouterr().out.strip().splitlines()[-1]).manifest
    assert all(x["blocks"] == ["merge", "merge"] for x in none.kind_params["members"])
    assert none.metrics["path_evaluations"] == 6
    main(args + ["--store", str(tmp_path / "r"), "--search", "random", "--episodes", "30"])
    rand = open_family(tmp_path / "r", capsys.readouterr().out.strip().splitlines()[-1]).manifest
    assert 30 <= rand.metrics["path_evaluations"] <= 36


def test_a_killed_hm3_run_resumes_without_evaluating_a_saved_path(quick_zoo, tmp_path, capsys, monkeypatch):
    import trainer.families.hm3.paths as paths
    args = ["train", "hm3", "--zoo", str(quick_zoo.root), "--members", "4", "--episodes", "64",
            "--search-images", "24", "--val-fraction", "0.2", "--ppo", "batch=16", "--device", "cpu"]
    real = paths.PathEvaluator.__call__
    new = []

    def counted(self, member, path, limit=None):
        if (member, tuple(path)) not in self.results:
            new.append(1)
            if len(new) == limit:
                raise KeyboardInterrupt
        return real(self, member, path)

    monkeypatch.setattr(paths.PathEvaluator, "__call__", lambda s, m, p: counted(s, m, p))
    main(args + ["--store", str(tmp_path / "a")])
    whole = open_family(tmp_path / "a", capsys.readouterr().out.strip().splitlines()[-1]).manifest
    total = len(new)
    new.clear()
    monkeypatch.setattr(paths.PathEvaluator, "__call__", lambda s, m, p: counted(s, m, p, limit=total // 2))
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--store", str(tmp_path / "b")])
    saved = len(json.loads(next((tmp_path / "b" / ".runs").glob("*/paths.json")).read_text())["paths"])
    assert 0 < saved < total // 2
    new.clear()
    monkeypatch.setattr(paths.PathEvaluator, "__call__", lambda s, m, p: counted(s, m, p))
    main(args + ["--store", str(tmp_path / "b"), "--resume"])
    resumed = open_family(tmp_path / "b", capsys.readouterr().out.strip().splitlines()[-1]).manifest
    assert len(new) == total - saved and resumed.metrics["path_evaluations_resumed"] == saved
    assert resumed.kind_params == whole.kind_params  # the seeded search replayed the same way


def test_hm3_bench_on_a_quick_zoo(quick_zoo, tmp_path):
    """bench/hm3_bench.py end to end (the figures come from the demo zoo; here, that it runs and
    that the ablations spend what they say)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from bench import hm3_bench
    out = hm3_bench.main(["--zoo", str(quick_zoo.root), "--members", "5", "--episodes", "64", "--others", "none", "--levels", "0.9:20",
                          "--device", "cpu", "--out-dir", str(tmp_path)])
    rows = json.loads(Path(out["path"]).read_text())["results"]
    assert set(rows) == {"hm3", "hm3 (parameter level)", "hm3 (allow skip)", "hm3 (random paths)",
                         "parameter level, drop 0.9, trim 20", "ta-pref at hm3's points"}
    assert rows["hm3 (parameter level)"]["path_evaluations"] == 5
    assert abs(rows["hm3 (random paths)"]["path_evaluations"] - rows["hm3"]["path_evaluations"]) <= 5
    assert all(r["members_worse_on_validation"] == 0 for r in rows.values() if "paths" in r)
    assert all(r["members_hypervolume"] > 0 for r in rows.values())
