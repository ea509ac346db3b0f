"""HM3 on one zoo (issue 15): its front on the test split beside its ablations and the other
families, and its training cost by stage.

    python bench/hm3_bench.py --zoo runs/demo/zoo

Families, each trained as `pmerge train` does (defaults unless said):
- hm3: PPO over the paths;
- hm3 (parameter level): --search none, every block from the member's DARE-TIES merge;
- hm3 (random paths): --search random with as many path evaluations as hm3 spent;
- hm3 (allow skip): --allow-skip, blocks may be left out at --depth-penalty's price;
- parameter level alone at other --drop and --trim (`--levels`, the sweep behind the defaults);
- ta-pref at hm3's points: task arithmetic + preference at the same member preferences;
- pm and map with their defaults.
Per family: the hypervolume (reference 0) of its members' test accuracies (the points it can
serve) and of its front at the report's preferences, the average at the equal preference; for the
HM3 rows, the members whose path beats their parameter level on the validation objective (by
construction never worse) and on the test split, the blocks run, and the seconds by stage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          temporary_store, write_result)
from models_store.preference import equal_preference, from_weights  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.families import FamilyLearner, LearnContext, get_family_learner  # noqa: E402
from trainer.families.point_set import point_set_family  # noqa: E402
from trainer.families.ta_pref.learner import TaPrefConfig, members_at  # noqa: E402
from trainer.front import FAMILY, FrontConfig, compute_front  # noqa: E402

NAME = "hm3"
HM3 = "hm3"
ABLATIONS = {"hm3 (parameter level)": {"search": "none"}, "hm3 (allow skip)": {"allow_skip": True}}
OTHERS = {"pm": ("pm", {}), "map": ("map", {})}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--grid", type=int, default=2, help="the front's simplex grid (plus the anchors)")
    p.add_argument("--members", type=int, default=32, help="hm3's --members")
    p.add_argument("--episodes", type=int, default=None, help="hm3's --episodes (default its own)")
    p.add_argument("--others", default=",".join(OTHERS), help=f"other families beside: {', '.join(OTHERS)} or none")
    p.add_argument("--levels", default="0.9:20,0.5:20,0.9:100,0:100",
                   help="more parameter levels alone, DROP:TRIM,... (the sweep behind --drop and --trim); none")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("hm3-bench-") as store:
        return measure(args, device, store)


def ta_pref_at(ctx: LearnContext, prefs: list[list[float]]):
    """Task arithmetic + preference at exactly these preferences."""
    tasks = ctx.zoo.tasks
    members = members_at([from_weights(p, tasks) for p in prefs], TaPrefConfig().scale, tasks)
    at = FamilyLearner(f"ta-pref-at-{len(prefs)}", TaPrefConfig, lambda c, config: point_set_family(c, config, members), "")
    return at(ctx)


def measure(args: argparse.Namespace, device: torch.device, store: Path) -> dict:
    zoo = Zoo(args.zoo)
    ctx = LearnContext(zoo, store, device=device, progress=False)
    hm3 = get_family_learner("hm3")
    base = {"members": args.members} | ({} if args.episodes is None else {"episodes": args.episodes})
    families = {HM3: open_family(store, hm3(ctx, hm3.config(**base)).name)}
    spent = families[HM3].manifest.metrics["path_evaluations"]
    for label, fields in ABLATIONS.items():
        families[label] = open_family(store, hm3(ctx, hm3.config(**base, **fields)).name)
    for level in filter(lambda x: x not in ("", "none"), args.levels.split(",")):
        drop, trim = map(float, level.split(":"))
        fields = {"search": "none", "drop": drop, "trim": trim}
        families[f"parameter level, drop {drop:g}, trim {trim:g}"] = open_family(store, hm3(ctx, hm3.config(**base, **fields)).name)
    # as many evaluations as hm3's: its starts are evaluated after the random paths
    random = hm3.config(**(base | {"search": "random", "episodes": max(0, spent - args.members)}))
    families["hm3 (random paths)"] = open_family(store, hm3(ctx, random).name)
    prefs = [m["preference"] for m in families[HM3].manifest.kind_params["members"]]
    families["ta-pref at hm3's points"] = open_family(store, ta_pref_at(ctx, prefs).name)
    for label in filter(None, args.others.split(",")):
        if label != "none":
            name, fields = OTHERS[label]
            learner = get_family_learner(name)
            families[label] = open_family(store, learner(ctx, learner.config(**fields)).name)
    for label, f in families.items():
        print(f"{label}: {f.family_id}", flush=True)
    first, *others = families.values()
    report = compute_front(first, FrontConfig(grid=args.grid, random=0, baselines=[]), device,
                           families=others, log=lambda line: None)
    tasks = zoo.tasks
    start_test = report.models[f"{families['hm3 (parameter level)'].family_id}: members"].points
    rows = {}
    for label, family in families.items():
        name = FAMILY if family is first else family.family_id
        per_pref, members = report.models[name], report.models.get(f"{name}: members")
        equal = per_pref.point(equal_preference(tasks)).accuracy
        m = family.manifest.metrics
        row = {"family_id": family.family_id, "kind": family.manifest.kind, "method": family.manifest.method,
               "front_hypervolume": per_pref.hypervolume,
               "members_hypervolume": None if members is None else members.hypervolume,
               "equal": equal, "equal_average": sum(equal.values()) / len(equal),
               "train_seconds": m.get("train_seconds_this_run")}
        if family.manifest.method == "hm3":
            kp = family.manifest.kind_params["members"]
            gains = [x["metrics"]["val_objective"] - x["metrics"]["start_val_objective"] for x in kp]
            test_gains = [sum(w * a for w, a in zip(x["preference"], point.accuracy.values()))
                          - sum(w * a for w, a in zip(x["preference"], start.accuracy.values()))
                          for x, point, start in zip(kp, members.points, start_test)]
            row |= {"path_evaluations": m["path_evaluations"], "seconds_by_stage": m["seconds_by_stage"],
                    "block_forwards": m["block_forwards"],
                    "members_better_on_validation": sum(g > 0 for g in gains),
                    "members_worse_on_validation": sum(g < 0 for g in gains),
                    "members_better_on_test": sum(g > 1e-9 for g in test_gains),
                    "members_worse_on_test": sum(g < -1e-9 for g in test_gains),
                    "mean_test_objective_gain": sum(test_gains) / len(test_gains),
                    "blocks_run": sum(x["metrics"]["blocks_run"] for x in kp) / len(kp),
                    "paths": [x["blocks"] for x in kp]}
        rows[label] = row
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "tasks": tasks, "grid": args.grid,
                          "members": args.members, "preferences": [p.canonical for p in report.preferences]},
               "results": rows}
    path = write_result(args.out_dir, NAME, device, payload)
    fmt = lambda x, f: "" if x is None else format(x, f)  # noqa: E731
    print(markdown_table(
        ["family", "members HV", "front HV", "equal avg %", "path evals", "better/worse val", "better/worse test",
         "blocks", "train s"],
        [[label, fmt(r["members_hypervolume"], ".4f"), f"{r['front_hypervolume']:.4f}",
          f"{100 * r['equal_average']:.1f}", r.get("path_evaluations", ""),
          f"{r['members_better_on_validation']}/{r['members_worse_on_validation']}" if "paths" in r else "",
          f"{r['members_better_on_test']}/{r['members_worse_on_test']}" if "paths" in r else "",
          fmt(r.get("blocks_run"), ".2f"), r["train_seconds"]] for label, r in rows.items()]))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
