"""Every classic baseline on a zoo: accuracy per task and the time each merge took.

    python bench/baselines.py --zoo runs/demo-zoo

Rows: pretrained, each fine-tuned tower on its own task, then every method of the registry with
its defaults (the same code path as `pmerge merge`), evaluated on every task's test split.
Writes bench/results/baselines-<device>-<time>.json and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import add_common_args, machine_info, run_benchmark, write_result  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator, markdown_table, with_average  # noqa: E402
from trainer.methods import METHODS, MergeContext  # noqa: E402
from trainer.pool import ModelPool  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated registry names")
    add_common_args(parser)
    return run_benchmark(parser, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    zoo = Zoo(args.zoo)
    arch = zoo.manifest.architecture
    tasks = TaskPool(zoo)
    evaluator = Evaluator(arch, zoo.heads, tasks.test, device)
    rows = {"pretrained": evaluator.accuracy(zoo.pretrained())}
    for t in zoo.tasks:
        rows[f"finetuned ({t})"] = evaluator.accuracy(zoo.finetuned(t))
    rows["finetuned (each on its own task)"] = {t: rows[f"finetuned ({t})"][t] for t in zoo.tasks}
    seconds = {}
    for name in args.methods.split(","):
        method = METHODS[name]
        ctx = MergeContext(pool=ModelPool(zoo), device=device, progress=False,
                           unlabeled=tasks.unlabeled if method.needs_data else {})
        start = time.perf_counter()
        state = method(ctx)
        seconds[name] = time.perf_counter() - start
        rows[name] = evaluator.accuracy(state)
        print(f"{name}: {seconds[name]:.1f} s, average {100 * with_average(rows[name])['average']:.1f}", flush=True)
    table = markdown_table(rows, zoo.tasks, extra={n: {"merge time": f"{s:.1f} s"} for n, s in seconds.items()})
    print(table)
    payload = {"zoo": str(Path(args.zoo).resolve()), "machine": machine_info(device),
               "accuracy": {name: with_average(scores) for name, scores in rows.items()},
               "merge_seconds": seconds, "zoo_metrics": zoo.manifest.metrics, "table": table}
    print(f"wrote {write_result(args.out_dir, 'baselines', device, payload)}")
    return payload


if __name__ == "__main__":
    main()
