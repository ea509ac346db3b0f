"""How well each way of storing a family's corners keeps the fine-tuned towers (issue 38): per task,
the tower rebuilt from what the family would store, its test accuracy over the fine-tuned tower's.

- TALL masks (Wang et al., arXiv 2405.07813): one shared vector tau (the sum of the task vectors,
  or a merge's own vector) and per task a bit per parameter, m_t = 1[|tau_t| >= lambda_t |tau - tau_t|];
  task t's tower is theta0 + m_t * tau, lambda_t chosen on the zoo's held-out validation images.
- Quantised differences (models_store/quantize.py, what `react-anchored` stores): task t's tower is
  base + Q(theta_t - base), base = TSV-M's merge, Q group-wise to 8, 4 or 2 bits.

    python bench/target_compression.py --zoo runs/demo/zoo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import add_common_args, machine_info, markdown_table, now_iso, run_benchmark, write_result  # noqa: E402
from models_store.quantize import dequantize, quantize  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator  # noqa: E402
from trainer.families.validation import finetuning_subset, load_validation  # noqa: E402
from trainer.methods import MergeContext, get_method  # noqa: E402
from trainer.pool import ModelPool  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

NAME = "target-compression"
LAMBDAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--shared", default="sum,tsv-m,task-arithmetic,ties", help="TALL's shared vectors")
    p.add_argument("--bits", default="8,4,2")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    zoo = Zoo(args.zoo)
    pool = ModelPool(zoo)
    pre = zoo.manifest.preprocess
    test = Evaluator(zoo.manifest.architecture, zoo.heads, TaskPool(zoo).test, device)
    val = Evaluator(zoo.manifest.architecture, zoo.heads,
                    {t: load_validation(zoo.task(t).data, pre, 0.1, 0, finetuning_subset(zoo))[0] for t in zoo.tasks},
                    device)
    theta0, keys, vectors = pool.pretrained, pool.keys, pool.task_vectors
    finetuned = {t: test.accuracy(zoo.finetuned(t), [t])[t] for t in zoo.tasks}
    merge = lambda name: get_method(name)(MergeContext(pool=pool, device=device, seed=0, progress=False))  # noqa: E731
    rows = []
    for name in args.shared.split(","):
        shared = ({k: sum(vectors[t][k] for t in zoo.tasks) for k in keys} if name == "sum"
                  else {k: v.float() - theta0[k].float() for k, v in merge(name).items() if k in keys})
        for t in zoo.tasks:
            best = None
            for lam in LAMBDAS:
                masks = {k: vectors[t][k].abs() >= lam * (shared[k] - vectors[t][k]).abs() for k in keys}
                state = dict(theta0) | {k: (theta0[k].float() + masks[k] * shared[k]).to(theta0[k].dtype) for k in keys}
                score = val.accuracy(state, [t])[t]
                if best is None or score > best[0]:
                    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
                    best = (score, lam, state, kept)
            accuracy = test.accuracy(best[2], [t])[t]
            rows.append({"storage": f"TALL masks, shared {name}", "task": t, "lambda": best[1], "kept": best[3],
                         "accuracy": accuracy, "over_finetuned": accuracy / finetuned[t]})
    base = merge("tsv-m")
    for bits in (int(b) for b in args.bits.split(",")):
        for t in zoo.tasks:
            tower = zoo.finetuned(t)
            state = dict(base)
            for k in keys:
                delta = tower[k].float() - base[k].float()
                state[k] = (base[k].float() + dequantize(*quantize(delta, bits), bits, delta.shape)).to(base[k].dtype)
            accuracy = test.accuracy(state, [t])[t]
            rows.append({"storage": f"{bits}-bit difference from TSV-M", "task": t, "accuracy": accuracy,
                         "over_finetuned": accuracy / finetuned[t]})
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "lambdas": LAMBDAS},
               "finetuned": finetuned, "results": rows}
    path = write_result(args.out_dir, NAME, device, payload)
    storages = list(dict.fromkeys(r["storage"] for r in rows))
    print(markdown_table(["storage", *zoo.tasks, "worst"],
                         [[s, *(f"{r['over_finetuned']:.3f}" for r in rows if r["storage"] == s),
                           f"{min(r['over_finetuned'] for r in rows if r['storage'] == s):.3f}"] for s in storages]))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
