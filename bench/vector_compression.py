"""Whether a point-set family keeps its members when it stores its task vectors quantised (issue
38): for each family, a twin that differs only in `vector_bits` (the same members, the same
coefficients, the vectors re-stored quantised), then every stored member's test accuracy on every
task in both, and, for a family that makes a member per preference, the models served at the
front's preferences.

    python bench/vector_compression.py --zoo runs/demo/zoo --learners ta-pref,map,hm3
    python bench/vector_compression.py --zoo runs/demo/zoo --store runs/demo/families --families ID,...
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          temporary_store, write_result)
from models_store.family import Family, publish_family  # noqa: E402
from models_store.kinds import point_set  # noqa: E402
from models_store.simplex import PointSet  # noqa: E402
from models_store.task_tensors import TaskTensors  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

NAME = "vector-compression"
QUICK = {"map": ["--population", "40", "--generations", "50"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--learners", default="ta-pref,map,hm3", help="point-set learners to train, dense, first")
    p.add_argument("--store", help="a store holding --families already trained on the zoo")
    p.add_argument("--families", default="", help="dense point-set families of --store, instead of training")
    p.add_argument("--bits", default="4,2")
    p.add_argument("--test-limit", type=int, default=None, help="test images per task (default: all)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def twin(family: Family, store: Path, bits: int) -> Family:
    """The family with its vectors re-stored in `bits`: same members, coefficients and heads."""
    members: point_set.Members = family.body.member_weights
    tasks = family.tasks

    def per_task(vectors: TaskTensors) -> dict[str, dict[str, torch.Tensor]]:
        return {t: {p: vectors.stacked(p, torch.device("cpu"))[k] for p in vectors} for k, t in enumerate(tasks)}
    merges = per_task(members.merge_vectors) if members.params.merge_vectors else None
    files = point_set.family_files(members.pretrained, per_task(members.vectors), members.per_tensor, merges, bits)
    params = family.manifest.kind_params | {"vector_bits": bits}
    manifest = family.manifest.model_copy(update={"family_id": f"{family.family_id}-{bits}bit", "kind_params": params})
    return Family(publish_family(store, manifest, files, family.heads))


def models(family: Family) -> dict[str, object]:
    """What the family serves: each stored member, and the front's preferences where members are made."""
    out: dict[str, object] = {f"member {i}": i for i in range(len(family.manifest.kind_params["members"]))}
    if family.manifest.kind_params.get("at_preference"):
        out |= {f"pref {p.canonical}": family.variant(p) for p in PointSet().preferences(family.tasks)}
    return out


def run(args: argparse.Namespace, device: torch.device) -> dict:
    zoo = Zoo(args.zoo)
    test = Evaluator(zoo.manifest.architecture, zoo.heads, TaskPool(zoo, test_limit=args.test_limit).test, device)
    finetuned = {t: test.accuracy(zoo.finetuned(t), [t])[t] for t in zoo.tasks}
    rows, families = [], {}
    with temporary_store("vector-compression-") as scratch:
        store = Path(args.store) if args.store else scratch
        ids = [f for f in args.families.split(",") if f]
        if not ids:
            for learner in args.learners.split(","):
                out = subprocess.run([sys.executable, "-m", "models_store.cli", "train", learner, "--zoo", args.zoo,
                                      "--store", str(store), "--vector-bits", "32", *QUICK.get(learner, [])],
                                     check=True, capture_output=True, text=True)
                ids.append(out.stdout.strip().splitlines()[-1])
        for family_id in ids:
            dense = Family(store / family_id)
            kinds = {32: dense} | {b: twin(dense, scratch, b) for b in (int(x) for x in args.bits.split(","))}
            families[family_id] = {"method": dense.manifest.method, "disk_bytes": {
                bits: sum(c.disk_bytes for c in f.costs(torch.float32)) for bits, f in kinds.items()}}
            for label, variant in models(dense).items():
                scores = {bits: test.accuracy(dict(f.body.materialize(variant)), zoo.tasks) for bits, f in kinds.items()}
                for bits, s in scores.items():
                    if bits == 32:
                        continue
                    rows.append({"family": family_id, "method": dense.manifest.method, "model": label, "bits": bits,
                                 "dense": scores[32], "quantised": s,
                                 "drop_points": max(100 * (scores[32][t] - s[t]) for t in zoo.tasks)})
            print(f"{family_id}: {len(models(dense))} models", file=sys.stderr)
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "test_limit": args.test_limit},
               "finetuned": finetuned, "families": families, "results": rows}
    path = write_result(args.out_dir, NAME, device, payload)
    table = []
    for family_id, info in families.items():
        for bits in sorted(b for b in info["disk_bytes"] if b != 32):
            mine = [r for r in rows if r["family"] == family_id and r["bits"] == bits]
            drops = sorted(r["drop_points"] for r in mine)
            table.append([info["method"], bits, len(mine), f"{drops[-1]:.2f}", f"{drops[len(drops) // 2]:.2f}",
                          f"{info['disk_bytes'][bits] / info['disk_bytes'][32]:.3f}"])
    print(markdown_table(["method", "bits", "models", "worst drop (points)", "median drop", "disk vs dense"], table))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
