"""Every family learner's front on one zoo, in one table (issue 14): Pareto Merging on its default
base and on AdaMerging's (the paper's), ReACT and ReACT anchored at the fine-tuned towers, MAP
(served at the preference asked, or by the member its rule picks; weighted sum and Tchebycheff)
and task arithmetic + preference, each trained with its defaults as `pmerge train` does, then
`pmerge front --families` on the same preferences. Point-set families' members are evaluated too
("members_hypervolume"); `--random N` adds N preferences, for a like-for-like comparison with them.

    python bench/families_front.py --zoo runs/demo/zoo

Per family: the hypervolume of its test accuracies (reference 0), the average at the equal
preference, the smallest over tasks of task k's accuracy at the vertex of k (and that over the
fine-tuned tower's on k), and its training time (as its manifest records it). ReACT's
preference stage (features and solves) is timed beside PM's training in the same run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          temporary_store, write_result)
from models_store.preference import equal_preference  # noqa: E402
from models_store.simplex import vertices  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator  # noqa: E402
from trainer.families import LearnContext, get_family_learner  # noqa: E402
from trainer.front import FAMILY, FrontConfig, compute_front  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

NAME = "families-front"
# label -> (learner, its config's fields beyond the defaults)
FAMILIES = {"pm (tsv-m base)": ("pm", {}), "pm (adamerging base)": ("pm", {"base": "adamerging"}),
            "react": ("react", {}), "react-anchored": ("react-anchored", {}), "map": ("map", {}),
            "map (weighted-sum member)": ("map", {"at_preference": False}),
            "map (tchebycheff)": ("map", {"pick": "tchebycheff"}),
            "map (tchebycheff member)": ("map", {"pick": "tchebycheff", "at_preference": False}),
            "ta-pref": ("ta-pref", {})}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--grid", type=int, default=2, help="the front's simplex grid (plus the anchors)")
    p.add_argument("--random", type=int, default=0, help="Dirichlet(1) preferences beyond the grid (as many as a "
                                                         "point-set family's members: a like-for-like hypervolume)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(FAMILIES)}")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("families-front-") as store:
        return measure(args, device, store)


def measure(args: argparse.Namespace, device: torch.device, store: Path) -> dict:
    zoo = Zoo(args.zoo)
    tasks = zoo.tasks
    ctx = LearnContext(zoo, store, device=device, progress=False)
    labels = args.only.split(",") if args.only else list(FAMILIES)
    families = {}
    for label in labels:
        name, fields = FAMILIES[label]
        learner = get_family_learner(name)
        families[label] = open_family(store, learner(ctx, learner.config(**fields)).name)
        print(f"{label}: {families[label].family_id}", flush=True)
    first, *others = families.values()
    report = compute_front(first, FrontConfig(grid=args.grid, random=args.random, baselines=[]), device,
                           families=others, log=lambda line: None)
    test = TaskPool(zoo).test
    evaluator = Evaluator(zoo.manifest.architecture, zoo.heads, test, device)
    finetuned = {t: evaluator.accuracy(zoo.finetuned(t), [t])[t] for t in tasks}
    rows = {}
    for label, family in families.items():
        model = report.models[FAMILY if family is first else family.family_id]
        equal = model.point(equal_preference(tasks)).accuracy
        at_vertex = {t: model.point(v).accuracy[t] for t, v in zip(tasks, vertices(tasks))}
        metrics = family.manifest.metrics
        members = report.models.get(f"{FAMILY if family is first else family.family_id}: members")
        rows[label] = {"family_id": family.family_id, "kind": family.manifest.kind,
                       "hypervolume": model.hypervolume, "equal": equal,
                       "members_hypervolume": None if members is None else members.hypervolume,
                       "equal_average": sum(equal.values()) / len(equal), "at_vertex": at_vertex,
                       "vertex_over_finetuned": {t: at_vertex[t] / finetuned[t] for t in tasks},
                       "train_seconds": metrics.get("train_seconds_this_run"),
                       "preference_stage_seconds": metrics.get("preference_stage_seconds")}
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "tasks": tasks, "grid": args.grid,
                          "random": args.random,
                          "preferences": [p.canonical for p in report.preferences]},
               "finetuned_on_own_task": finetuned, "results": rows}
    path = write_result(args.out_dir, NAME, device, payload)
    print(markdown_table(
        ["family", "kind", "hypervolume", "equal avg %", "min_k acc_k at vertex k %", "min_k vertex / fine-tuned",
         "train s"],
        [[label, r["kind"], f"{r['hypervolume']:.4f}", f"{100 * r['equal_average']:.1f}",
          f"{100 * min(r['at_vertex'].values()):.1f}", f"{min(r['vertex_over_finetuned'].values()):.3f}",
          r["train_seconds"]] for label, r in rows.items()]))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
