"""The Pareto Merging hyperparameter sweep and quality bar on a zoo (the demo zoo by default).

    python bench/pm_sweep.py --zoo runs/demo-zoo                 # the sweep
    python bench/pm_sweep.py --zoo runs/demo-zoo --only default  # the quality bar of the defaults
    python bench/pm_sweep.py --zoo runs/demo-zoo --only default --more-seeds 2   # ... for seeds 0, 1, 2
    python bench/pm_sweep.py --zoo runs/demo-zoo --only default,base-tsv-m,base-iso-c   # the bases

For each configuration: train a family (through the learner registry, as `pmerge train`), evaluate it on the
front's preferences (`compute_front`, as `pmerge front`) and check the issue's quality bar:
  1. PM at the equal preference has a higher average accuracy than AdaMerging and than task
     arithmetic (both with their defaults, as `pmerge merge`);
  2. for every task k, the preference 0.7 on k scores higher on k than the equal preference;
  3. the hypervolume of PM's front >= that of task arithmetic + preference on the same points.
Writes bench/results/pm-sweep-<device>-<time>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import add_common_args, machine_info, markdown_table, run_benchmark, write_result  # noqa: E402,E501
from models_store.family import Family  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator  # noqa: E402
from trainer.front import FAMILY, FrontConfig, compute_front  # noqa: E402
from trainer.methods import MergeContext, get_method  # noqa: E402
from trainer.families import FAMILIES, LearnContext  # noqa: E402
from trainer.families.pareto.train import ParetoConfig  # noqa: E402
from trainer.pool import ModelPool  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

# Around the defaults: the paper's norm weight 0.1 and its other order of "0.1 and 1"; the low-rank
# factors' lr 3x lower and at lambda's 1e-3 (the paper's single lr); the paper's initialisation (with
# its single lr); the paper's objective (no diversity term); AdaMerging's 500 steps, the paper's batch
# of 32, preferences nearer the simplex's vertices.
SWEEP: dict[str, dict] = {
    "default": {},
    "norm0.1": {"norm_weight": 0.1},
    "cos0.1-norm1": {"cos_weight": 0.1, "norm_weight": 1.0},
    "lowrank-lr1e-4": {"lowrank_lr": 1e-4},
    "lowrank-lr1e-3": {"lowrank_lr": 1e-3},
    "kaiming": {"lowrank_init": "kaiming", "lowrank_lr": 1e-3},
    "diversity0": {"diversity_weight": 0.0},
    "steps500": {"steps": 500},
    "batch32": {"batch_size": 32},
    "alpha0.3": {"alpha": 0.3},
    # the base under the preference term (issue 14): the fixed merges of the registry
    **{f"base-{name}": {"base": name} for name in ("adamerging", "task-arithmetic", "ties", "tsv-m", "iso-c",
                                                    "iso-cts", "wudi")},
}


def average(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


SINGLE_MERGES = ("task-arithmetic", "adamerging", "tsv-m", "iso-c", "iso-cts", "wudi")


def reference_scores(zoo: Zoo, tasks: TaskPool, device: torch.device) -> dict[str, dict[str, float]]:
    """The single-model merges with their defaults (item 1 of the bar, and issue 14's best single merge)."""
    out = {}
    evaluator = Evaluator(zoo.manifest.architecture, zoo.heads, tasks.test, device)
    for name in SINGLE_MERGES:
        method = get_method(name)
        ctx = MergeContext(pool=ModelPool(zoo), device=device, progress=False,
                           unlabeled=tasks.unlabeled if method.needs_data else {})
        out[name] = evaluator.accuracy(method(ctx))
    return out


def quality(report, references: dict[str, dict[str, float]]) -> dict:
    family = report.models[FAMILY]
    equal = family.point(report.equal).accuracy
    steer = {t: {"at_0.7": family.point(p).accuracy[t], "at_equal": equal[t]} for t, p in report.priority().items()}
    ta_hv = report.models["ta-pref"].hypervolume
    return {
        "equal_average": average(equal),
        "equal": equal,
        "steering": steer,
        "hypervolume": family.hypervolume,
        "ta_pref_hypervolume": ta_hv,
        "bar": {
            "equal_beats_adamerging": average(equal) > average(references["adamerging"]),
            "equal_beats_task_arithmetic": average(equal) > average(references["task-arithmetic"]),
            "equal_at_least_the_best_single_merge": average(equal) >= max(map(average, references.values())),
            "preference_steers_every_task": all(s["at_0.7"] > s["at_equal"] for s in steer.values()),
            "hypervolume_at_least_ta_pref": family.hypervolume >= ta_hv,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SWEEP)}")
    parser.add_argument("--pm-plus", action="store_true", help="also train PM++ with each configuration")
    parser.add_argument("--store", help="family store (default: a temporary directory)")
    parser.add_argument("--grid", type=int, default=2, help="front grid divisions (plus equal and 0.7-on-k)")
    parser.add_argument("--more-seeds", type=int, default=0,
                        help="also train each configuration with seeds --seed+1 .. --seed+N (Dirichlet draws and "
                             "batches), to see how much the bar depends on the seed")
    add_common_args(parser)
    return run_benchmark(parser, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    zoo = Zoo(args.zoo)
    tasks = TaskPool(zoo)
    names = args.only.split(",") if args.only else list(SWEEP)
    store = Path(args.store or tempfile.mkdtemp(prefix="pm-sweep-"))

    references = reference_scores(zoo, tasks, device)
    front_cfg = FrontConfig(grid=args.grid, random=0, baselines=["ta-pref"])
    runs = {}
    seeds = range(args.seed, args.seed + args.more_seeds + 1)
    for name, seed in ((n, s) for n in names for s in seeds):
        for method in ("pm", "pm++") if args.pm_plus else ("pm",):
            cfg = ParetoConfig(method=method, seed=seed, **SWEEP[name])
            start = time.perf_counter()
            path = FAMILIES[method](LearnContext(zoo, store, device=device, progress=False), cfg)
            train_s = time.perf_counter() - start
            report = compute_front(Family(path), front_cfg, device, zoo=args.zoo, log=lambda _: None)
            label = f"{method} {name}" + (f" seed {seed}" if args.more_seeds else "")
            runs[label] = {"config": cfg.model_dump(), "family_id": path.name,
                           "train_seconds": train_s} | quality(report, references)
            r = runs[label]
            print(f"{label}: equal {100 * r['equal_average']:.1f}, HV {r['hypervolume']:.4f} "
                  f"(ta-pref {r['ta_pref_hypervolume']:.4f}), bar {r['bar']}", flush=True)

    headers = ["run", "equal avg %", "HV", "TA+pref HV", "steers (tasks)", "bar passed", "train s"]
    rows = [[name, f"{100 * r['equal_average']:.1f}", f"{r['hypervolume']:.4f}", f"{r['ta_pref_hypervolume']:.4f}",
             f"{sum(s['at_0.7'] > s['at_equal'] for s in r['steering'].values())}/{len(r['steering'])}",
             f"{sum(r['bar'].values())}/{len(r['bar'])}", f"{r['train_seconds']:.0f}"] for name, r in runs.items()]
    table = markdown_table(headers, rows)
    refs = {n: f"{100 * average(s):.1f}" for n, s in references.items()}
    print("single merges, average %: " + ", ".join(f"{n} {v}" for n, v in refs.items()))
    print(table)
    payload = {"zoo": str(Path(args.zoo).resolve()), "machine": machine_info(device), "store": str(store),
               "references": references, "front": front_cfg.model_dump(), "runs": runs, "table": table}
    print(f"wrote {write_result(args.out_dir, 'pm-sweep', device, payload)}")
    return payload


if __name__ == "__main__":
    main()
