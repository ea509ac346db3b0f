"""Issue 29's sweep: can one family be the best at every preference? Candidates against the
published families, at `front`'s preferences (grid 2 and the anchors) on the test split, per seed.

    python bench/dominance_sweep.py --zoo runs/demo/zoo --seeds 0,1,2

Published families, trained by their learners with the seed: ReACT (TSV-M base), Pareto Merging
(TSV-M base), MAP served at the preference (Tchebycheff and weighted sum) and task arithmetic +
preference. Candidates, evaluated here from their parts (no kind of their own yet):

- `react on <base>`: ReACT's maps fitted on another fixed base: PM's tower at the equal preference
  (a learned base), or a merge of `pmerge merge`; beta as given;
- `anchored q=<q>`: ReACT whose tower moves towards fine-tuned tower k where p_k > q, by
  a = (p_k - q) / (1 - q), its map towards the identity by the same a: at the vertex of k it is
  fine-tuned tower k, for p_k <= q it is ReACT.

Per family and seed: the hypervolume of its points, the equal preference's average over the
fine-tuned towers' average, the worst vertex over fine-tuned, and the largest shortfall, over the
preferences, of its preference-weighted accuracy to the best published family there (points).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          temporary_store, write_result)
from models_store.kinds.feature_map import map_factors, preference_maps  # noqa: E402
from models_store.preference import Preference, equal_preference  # noqa: E402
from models_store.simplex import PointSet, vertices  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.tower import float_keys, head_logits  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator  # noqa: E402
from trainer.families import LearnContext, get_family_learner  # noqa: E402
from trainer.families.react.learner import react_maps  # noqa: E402
from trainer.hypervolume import hypervolume  # noqa: E402
from trainer.methods import MergeContext, get_method  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

NAME = "dominance-sweep"
PUBLISHED = {"react": ("react", {}), "pm": ("pm", {}), "map (tchebycheff)": ("map", {"pick": "tchebycheff"}),
             "map": ("map", {}), "ta-pref": ("ta-pref", {})}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--bases", default="tsv-m,pm-equal", help="ReACT's bases: pm-equal, or merge methods (with their "
                                                            "defaults, or METHOD:FIELD=VALUE)")
    p.add_argument("--betas", default="0.1")
    p.add_argument("--anchors", default="0.5,0.7", help="anchoring thresholds q (on the first base)")
    p.add_argument("--published", default=",".join(PUBLISHED))
    p.add_argument("--calibration", type=int, default=2048, help="ReACT's calibration images per task (at most)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("dominance-") as store:
        return measure(args, device, store)


class Candidates:
    """ReACT's parts on one base: the base's features of every test image, and the per-task maps."""

    def __init__(self, evaluator: Evaluator, zoo: Zoo, base: dict, unlabeled: dict, beta: float, seed: int,
                 device: torch.device, calibration: int = 2048):
        self.evaluator, self.zoo, self.base = evaluator, zoo, base
        W, C = react_maps(zoo, base, unlabeled, beta, calibration, seed, device)
        self.WC, self.C = map_factors(W, C, device)
        self.features = {t: evaluator.features(base, evaluator.images[t]) for t in evaluator.tasks}

    def accuracy(self, features: dict, W_p: torch.Tensor) -> dict[str, float]:
        ev = self.evaluator
        return {t: float((head_logits(f @ W_p.T, ev.heads[t].weight, ev.heads[t].bias).argmax(-1)
                          == ev.labels[t]).float().mean()) for t, f in features.items()}

    def react(self, pref: Preference) -> dict[str, float]:
        return self.accuracy(self.features, preference_maps(self.WC, self.C, [pref.weights])[0])

    def anchored(self, pref: Preference, q: float) -> dict[str, float]:
        weights = list(pref.weights)
        k = max(range(len(weights)), key=weights.__getitem__)
        a = max(0.0, (weights[k] - q) / (1 - q))
        if a == 0.0:
            return self.react(pref)
        finetuned = self.zoo.finetuned(self.zoo.tasks[k])
        keys = set(float_keys(self.base))
        state = {n: (w.float() + a * (finetuned[n].float() - w.float())).to(w.dtype) if n in keys else w
                 for n, w in self.base.items()}
        ev = self.evaluator
        features = {t: ev.features(state, ev.images[t]) for t in ev.tasks}
        W_p = preference_maps(self.WC, self.C, [pref.weights])[0]
        eye = torch.eye(len(W_p), device=W_p.device)
        return self.accuracy(features, (1 - a) * W_p + a * eye)


def summary(points: dict[str, dict[str, float]], prefs: list[Preference], tasks: list[str],
            finetuned: dict[str, float]) -> dict:
    equal = points[equal_preference(tasks).canonical]
    return {"hypervolume": hypervolume([[points[p.canonical][t] for t in tasks] for p in prefs]),
            "equal_average": sum(equal.values()) / len(tasks),
            "equal_over_finetuned": sum(equal.values()) / sum(finetuned.values()),
            "worst_vertex_over_finetuned": min(points[v.canonical][t] / finetuned[t]
                                               for t, v in zip(tasks, vertices(tasks)))}


def measure(args: argparse.Namespace, device: torch.device, store: Path) -> dict:
    zoo = Zoo(args.zoo)
    tasks = zoo.tasks
    prefs = PointSet(grid=2, random=0).preferences(tasks)
    test = TaskPool(zoo).test
    evaluator = Evaluator(zoo.manifest.architecture, zoo.heads, test, device)
    finetuned = {t: evaluator.accuracy(zoo.finetuned(t), [t])[t] for t in tasks}
    ctx = LearnContext(zoo, store, device=device, progress=False)
    unlabeled = ctx.unlabeled
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        fronts: dict[str, dict[str, dict[str, float]]] = {}
        families = {}
        for label in [x for x in args.published.split(",") if x]:
            name, fields = PUBLISHED[label]
            learner = get_family_learner(name)
            family = families[label] = open_family(store, learner(ctx, learner.config(**fields, seed=seed)
                                                                  if "seed" in learner.config.model_fields
                                                                  else learner.config(**fields)).name)
            fronts[label] = {p.canonical: evaluator.accuracy(dict(family.body.iter_materialized(p.tensor(), device)))
                             for p in prefs}
            print(f"seed {seed}: {label} ({family.family_id}) evaluated", flush=True)
        for base_name in args.bases.split(","):
            if base_name == "pm-equal":
                pm = families.get("pm") or open_family(store, get_family_learner("pm")(
                    ctx, get_family_learner("pm").config(seed=seed)).name)
                base = dict(pm.body.iter_materialized(equal_preference(tasks).tensor(), device))
            else:  # a merge method, with its defaults or METHOD:FIELD=VALUE
                method, _, field = base_name.partition(":")
                merge = get_method(method)
                fields = dict([field.split("=")]) if field else {}
                base = merge(MergeContext(pool=ctx.pool, unlabeled=unlabeled, device=device, seed=seed,
                                          progress=False), merge.config(**fields))
            for beta in [float(b) for b in args.betas.split(",")]:
                parts = Candidates(evaluator, zoo, base, unlabeled, beta, seed, device, args.calibration)
                label = f"react on {base_name}, beta {beta}"
                fronts[label] = {p.canonical: parts.react(p) for p in prefs}
                print(f"seed {seed}: {label} evaluated", flush=True)
                for q in [float(x) for x in args.anchors.split(",") if x]:
                    fronts[f"anchored q={q} on {base_name}, beta {beta}"] = {p.canonical: parts.anchored(p, q)
                                                                             for p in prefs}
        rows = {label: summary(points, prefs, tasks, finetuned) for label, points in fronts.items()}
        for p in prefs:  # against the best published family there (a candidate against them and itself)
            weighted = {label: sum(w * points[p.canonical][t] for w, t in zip(p.weights, tasks))
                        for label, points in fronts.items()}
            best = max((weighted[label] for label in families), default=0.0)
            for label, value in weighted.items():
                rows[label]["worst_shortfall_points"] = max(rows[label].get("worst_shortfall_points", 0.0),
                                                            100 * (max(best, value) - value))
        for label in rows:
            rows[label]["points"] = fronts[label]
        per_seed[seed] = rows
    labels = list(per_seed[seeds[0]])
    keys = ["hypervolume", "equal_over_finetuned", "worst_vertex_over_finetuned", "worst_shortfall_points"]
    stats = {label: {k: {"mean": statistics.mean(per_seed[s][label][k] for s in seeds),
                         "min": min(per_seed[s][label][k] for s in seeds),
                         "max": max(per_seed[s][label][k] for s in seeds)} for k in keys} for label in labels}
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "tasks": tasks,
                          "preferences": [p.canonical for p in prefs], "seeds": seeds},
               "finetuned_on_own_task": finetuned, "summary": stats, "per_seed": per_seed}
    path = write_result(args.out_dir, NAME, device, payload)
    cell = lambda s, f: f"{f(s['mean'])} [{f(s['min'])}, {f(s['max'])}]"  # noqa: E731
    print(markdown_table(
        ["family", "hypervolume", "equal / fine-tuned", "worst vertex / fine-tuned", "worst shortfall (points)"],
        [[label, cell(s["hypervolume"], "{:.4f}".format), cell(s["equal_over_finetuned"], "{:.3f}".format),
          cell(s["worst_vertex_over_finetuned"], "{:.3f}".format), cell(s["worst_shortfall_points"], "{:.1f}".format)]
         for label, s in stats.items()]))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
