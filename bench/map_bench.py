"""MAP's quality bar and cost on a zoo (issue 13): MAP and Bayesian MAP as `pmerge train` runs
them, beside direct search and task arithmetic + preference, all scored on the TEST split.

    python bench/map_bench.py --zoo runs/demo/zoo

- MAP and BMAP at the budget B (default 2 (K+1)(K+2)/2) and at 3/4 of it (at least the
  surrogate's size + K + 1, so that BMAP has rounds after its initial design): every surrogate's R^2 and leave-one-out error on the validation data, wall time by stage
  (merge, evaluate, fit, NSGA-III), evaluations; the "real" front: each member's test accuracy.
- Direct search, no surrogate: a design like MAP's, the points non-dominated on validation
  accuracy, then their test accuracy; at MAP's design budget, and at all the real evaluations
  MAP made (design + front).
- Task arithmetic + preference at `pmerge front`'s default preferences (the grid with 3
  divisions, the anchors, 5 draws), test accuracy.

- On sub-zoos of the first 2 and the first 3 tasks (`--sub-zoos 2=16,3=7`: K=N, the grid's N):
  `pmerge front --ground-truth grid:N` on MAP (picks weighted-sum and tchebycheff) beside
  ta-pref and direct search at MAP's budget: every model's IGD+ against the dense grid's front,
  and MAP-real's hypervolume as a fraction of the grid's.

Hypervolume (reference point 0) of each set's non-dominated test accuracies. The bar: R^2 >= 0.9
on every task; MAP's hypervolume >= direct search's and >= ta-pref's; BMAP with fewer evaluations
against MAP at B (and MAP itself with as few); on the sub-zoos, IGD+ and the grid margin stated.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          temporary_store, write_result)
from models_store.flags import key_values  # noqa: E402
from models_store.simplex import PointSet  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.zoo import Zoo, write_subset  # noqa: E402
from trainer.families import LearnContext, get_family_learner  # noqa: E402
from trainer.families.map.design import default_budget, design_points, surrogate_size  # noqa: E402
from trainer.evaluate import CoefficientEvaluator  # noqa: E402
from trainer.families.validation import validation_sets  # noqa: E402
from trainer.front import FrontConfig, compute_front  # noqa: E402
from trainer.hypervolume import hypervolume, non_dominated  # noqa: E402
from trainer.methods.preference import task_weights  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

NAME = "map"


def front_hv(points: list[list[float]]) -> float:
    keep = non_dominated(points)
    return hypervolume([p for p, k in zip(points, keep) if k])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--budget", type=int, default=None, help="MAP's evaluations (default 2 (K+1)(K+2)/2)")
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--generations", type=int, default=200)
    p.add_argument("--sub-zoos", default="2=16,3=7", help="K=N,...: sub-zoos of the first K tasks against the "
                   "grid:N ground truth (none: skip)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("map-bench-") as store:
        return measure(args, device, store)


def measure(args: argparse.Namespace, device: torch.device, store: Path) -> dict:
    zoo = Zoo(args.zoo)
    k = len(zoo.tasks)
    budget = args.budget or default_budget(k)
    common = {"population": args.population, "generations": args.generations, "seed": args.seed}
    ctx = LearnContext(zoo, store, device=device, progress=False)
    test = CoefficientEvaluator(ctx.pool, TaskPool(zoo).test, device)  # every model below, scored on the test split
    fewer = max(surrogate_size(k) + k + 1, round(0.75 * budget))
    runs = {"map": ("map", {"budget": budget}), "bmap": ("bmap", {"budget": budget}),
            "map-fewer": ("map", {"budget": fewer}), "bmap-fewer": ("bmap", {"budget": fewer})}
    results: dict = {}
    for name, (method, extra) in runs.items():
        learner = get_family_learner(method)
        start = time.perf_counter()
        family = open_family(store, learner(ctx, learner.config(**common, **extra)).name)
        seconds = time.perf_counter() - start
        members = family.manifest.kind_params["members"]
        accuracy = [test(np.array(m["coefficients"])).accuracy for m in members]
        results[name] = {"evaluations": family.manifest.metrics["evaluations"], "seconds": round(seconds, 2),
                         "surrogates": family.manifest.metrics["surrogates"],
                         "seconds_by_stage": family.manifest.metrics["seconds_by_stage"],
                         "members": len(members), "test_accuracy": accuracy, "hypervolume": front_hv(accuracy)}
        print(f"{name}: {len(members)} members, HV {results[name]['hypervolume']:.4f}, {seconds:.1f} s", flush=True)

    # direct search, no surrogate: a design like MAP's, its validation-non-dominated points on test;
    # with MAP's design budget, and with every real evaluation MAP made (its front's too)
    config = get_family_learner("map").config(budget=budget, **common)
    val = CoefficientEvaluator(ctx.pool, validation_sets(ctx, config), device)
    spent = budget + results["map"]["evaluations"]["front"]
    for name, count in (("direct-search", budget), ("direct-search-all", spent)):
        design = design_points(k, count, config.c_max, config.design, config.seed)
        on_val = [val(c).accuracy for c in design]
        chosen = [c for c, keep in zip(design, non_dominated(on_val)) if keep]
        direct = [test(c).accuracy for c in chosen]
        results[name] = {"evaluations": count, "members": len(chosen), "test_accuracy": direct,
                         "hypervolume": front_hv(direct)}
    # task arithmetic + preference at front's default preferences
    prefs = PointSet().preferences(zoo.tasks)
    ta = [test(np.array([0.3 * w for w in task_weights(p, zoo.tasks)])).accuracy for p in prefs]
    results["ta-pref"] = {"members": len(prefs), "test_accuracy": ta, "hypervolume": front_hv(ta)}

    sub_zoos = {} if args.sub_zoos == "none" else {int(k): int(n) for k, n in key_values(
        args.sub_zoos.split(","), "--sub-zoos").items()}
    ground_truth = {f"{k}-task": against_the_grid(zoo, k, n, common, store, device) for k, n in sub_zoos.items()}

    r2 = {t: s["r2"] for t, s in results["map"]["surrogates"].items()}
    bar = {"r2_at_least_0.9": all(v >= 0.9 for v in r2.values()),
           "map_hv_at_least_direct_search": results["map"]["hypervolume"] >= results["direct-search"]["hypervolume"],
           "map_hv_at_least_direct_search_all": (results["map"]["hypervolume"]
                                                 >= results["direct-search-all"]["hypervolume"]),
           "map_hv_at_least_ta_pref": results["map"]["hypervolume"] >= results["ta-pref"]["hypervolume"],
           "bmap_fewer_over_map_hv": results["bmap-fewer"]["hypervolume"] / results["map"]["hypervolume"],
           "map_fewer_over_map_hv": results["map-fewer"]["hypervolume"] / results["map"]["hypervolume"]}
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "tasks": zoo.tasks, "budget": budget,
                          **common},
               "results": results, "ground_truth": ground_truth, "quality_bar": bar}
    path = write_result(args.out_dir, NAME, device, payload)
    def evaluations(r: dict):
        spent = r.get("evaluations", "")
        return f"{spent['design']} + {spent['front']}" if isinstance(spent, dict) else spent

    rows = [[name, evaluations(r), r["members"], f"{r['hypervolume']:.4f}", r.get("seconds", "")]
            for name, r in results.items()]
    print(markdown_table(["model", "evaluations (design + front)", "points", "hypervolume (test)", "seconds"], rows))
    print("surrogate R^2 (map): " + ", ".join(f"{t} {v:.3f}" for t, v in r2.items()))
    print(f"stages (map): {results['map']['seconds_by_stage']}")
    for name, g in ground_truth.items():
        print(f"{name} sub-zoo ({', '.join(g['tasks'])}), ground truth grid:{g['grid']} "
              f"({g['grid'] ** len(g['tasks'])} points); MAP-real HV / grid HV {g['map_real_over_grid_hv']:.3f}")
        print(markdown_table(["model", "hypervolume", "IGD+", "points"],
                             [[m, f"{r['hypervolume']:.4f}", f"{r['igd_plus']:.4f}", r["points"]]
                              for m, r in g["models"].items()]))
    print(f"quality bar: {bar}")
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


def against_the_grid(zoo: Zoo, k: int, steps: int, common: dict, store: Path, device: torch.device) -> dict:
    """`pmerge front --ground-truth grid:N` on the first k tasks: MAP with both pick rules, ta-pref,
    direct search at MAP's budget; every model's hypervolume and IGD+ against the grid."""
    sub = write_subset(zoo, zoo.tasks[:k], store / f"zoo-{k}")
    ctx = LearnContext(sub, store / f"families-{k}", device=device, progress=False)
    learner = get_family_learner("map")
    family, tchebycheff = (open_family(ctx.store, learner(ctx, learner.config(pick=pick, **common)).name)
                           for pick in ("weighted-sum", "tchebycheff"))
    start = time.perf_counter()
    report = compute_front(family, FrontConfig(baselines=["ta-pref"], ground_truth=f"grid:{steps}"), device,
                           families=[tchebycheff], log=lambda line: None)
    rename = {"family": "map (weighted-sum)", "family: members": "map: real", "family: predicted": "map: predicted",
              tchebycheff.family_id: "map (tchebycheff)"}
    # the tchebycheff family's members and predictions are the weighted-sum family's: one row each
    models = {rename.get(name, name): {"hypervolume": m.hypervolume, "igd_plus": m.igd_plus, "points": len(m.points)}
              for name, m in report.models.items() if not name.startswith(f"{tchebycheff.family_id}: ")}
    grid = models[f"ground-truth grid:{steps}"]["hypervolume"]
    return {"tasks": sub.tasks, "grid": steps, "real_evaluations": family.manifest.metrics["real_evaluations"],
            "surrogates": family.manifest.metrics["surrogates"], "models": models,
            "map_real_over_grid_hv": models["map: real"]["hypervolume"] / grid,
            "front_seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    main()
