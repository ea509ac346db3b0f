"""ReACT's preference stage beside Pareto Merging's training, on a zoo of random towers (issue 14's
speed figure): both learners as `pmerge train` runs them, with their defaults, on the same zoo
and the same unlabeled images, one run each.

    python bench/react_speed.py --device cuda                     # ViT-B/32, 8 tasks (gpu.sh step 5)
    python bench/react_speed.py --device cpu --arch tiny --tasks 3 --images 64 --pm-steps 20   # a dry run

The zoo is bench/map_speed.py's (open_clip's initialisation plus noise, random heads, random
images as every task's unlabeled data); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, now_iso, run_benchmark, temporary_store,  # noqa: E402
                          write_result)
from bench.map_speed import random_images, random_zoo  # noqa: E402
from models_store.store import open_family  # noqa: E402
from trainer.families import LearnContext, get_family_learner  # noqa: E402

NAME = "react-speed"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--images", type=int, default=512, help="unlabeled images per task")
    p.add_argument("--pm-steps", type=int, default=None, help="PM's steps (default: its default, 250)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("react-speed-") as work:
        spec = random_images(work / "images", 8, args.seed, test=args.images)  # unlabeled: the test split
        zoo = random_zoo(work / "zoo", args.arch, args.tasks, spec, args.seed)
        ctx = LearnContext(zoo, work / "store", device=device, progress=False)
        ctx.unlabeled  # read the images once, outside both timings
        results = {}
        for name, fields in (("react", {}), ("pm", {"steps": args.pm_steps} if args.pm_steps else {})):
            learner = get_family_learner(name)
            start = time.perf_counter()
            family = open_family(ctx.store, learner(ctx, learner.config(**fields)).name)
            results[name] = {"seconds": round(time.perf_counter() - start, 2), "metrics": family.manifest.metrics}
            print(f"{name}: {results[name]['seconds']} s", flush=True)
    results["pm_over_react"] = results["pm"]["seconds"] / results["react"]["seconds"]
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "arch": args.arch, "tasks": args.tasks, "images": args.images,
                          "pm_steps": args.pm_steps or 250}, "results": results}
    path = write_result(args.out_dir, NAME, device, payload)
    print(f"PM's training / ReACT's preference stage: {results['pm_over_react']:.1f}; wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
