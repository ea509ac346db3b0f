"""MAP's wall time by stage on a zoo of random towers: issue 13's speed target, the default budget
for 8 tasks on ViT-B/32 with 512 validation images per task, run by the `map` learner itself.

    python bench/map_speed.py --device cuda                      # the GPU target: under 5 minutes
    python bench/map_speed.py --device cpu --arch tiny --tasks 3 --val-images 64   # a dry run

Nothing is downloaded: the pretrained tower is open_clip's random initialisation, each fine-tuned
tower the pretrained one plus Gaussian noise (1 % of each tensor's spread), the heads random;
every task's validation data are the same folder of random 32x32 PNGs (8 classes), which the
preprocessing resizes to the tower's input, given to MAP as `--val TASK=folder:DIR`. The zoo is
written to disk as `pmerge zoo` would (for ViT-B/32 and 8 tasks: 3.2 GB in a temporary directory).
The result records the whole run's seconds and MAP's stages (merge, evaluate, fit, NSGA-III).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import add_common_args, machine_info, now_iso, run_benchmark, write_result  # noqa: E402
from models_store.preprocess import Preprocess  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.tower import build_tower, image_size, resolve_architecture  # noqa: E402
from models_store.zoo import Head, TaskInfo, ZooManifest, write_zoo  # noqa: E402
from trainer.families import LearnContext, get_family_learner  # noqa: E402
from trainer.families.map.design import default_budget  # noqa: E402

NAME = "map-speed"
CLASSES = 8
TARGET_SECONDS = 300.0  # on a GPU, the default 8-task budget on ViT-B/32 (the public MAP: about 11.6 GPU-hours)


def random_images(root: Path, count: int, seed: int, test: int = CLASSES) -> str:
    """folder:ROOT with ROOT/{train,test}/<class>/*.png: `count` random 32x32 images in CLASSES
    classes for train (MAP's validation data), `test` for test (unlabeled data's default)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("test", test)):
        for i in range(n):
            folder = root / split / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return f"folder:{root}"


def random_zoo(root: Path, arch_name: str, tasks: int, spec: str, seed: int):
    torch.manual_seed(seed)
    arch = resolve_architecture(arch_name)
    tower, size = build_tower(arch), image_size(arch)
    with torch.no_grad():
        dim = int(tower(torch.zeros(1, 3, size, size)).shape[-1])
    pretrained = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    names = [f"task{i}" for i in range(tasks)]

    def noisy(v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point() or v.numel() < 2:
            return v
        return v + 0.01 * float(v.std()) * torch.randn_like(v)

    finetuned = {t: {k: noisy(v) for k, v in pretrained.items()} for t in names}
    heads = {t: Head(weight=torch.nn.functional.normalize(torch.randn(CLASSES, dim), dim=-1)) for t in names}
    classes = [f"class{i}" for i in range(CLASSES)]
    manifest = ZooManifest(architecture=arch, preprocess=Preprocess(image_size=size),
                           tasks=[TaskInfo(name=t, classes=classes, data=spec) for t in names])
    return write_zoo(root, manifest, pretrained, finetuned, heads)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--val-images", type=int, default=512, help="validation images per task")
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--generations", type=int, default=200)
    p.add_argument("--work-dir", type=Path, default=None, help="where the zoo goes (default: a temporary directory)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    work = Path(tempfile.mkdtemp(prefix="map-speed-", dir=args.work_dir))
    try:
        start = time.perf_counter()
        spec = random_images(work / "images", args.val_images, args.seed)
        zoo = random_zoo(work / "zoo", args.arch, args.tasks, spec, args.seed)
        setup = time.perf_counter() - start
        learner = get_family_learner("map")
        config = learner.config(val={t: spec for t in zoo.tasks}, population=args.population,
                                generations=args.generations, seed=args.seed)
        ctx = LearnContext(zoo, work / "store", device=device, progress=False)
        start = time.perf_counter()
        family = open_family(ctx.store, learner(ctx, config).name)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = family.manifest.metrics
    target = {"applies": device.type == "cuda" and args.arch == "ViT-B-32" and args.tasks == 8
              and args.val_images == 512, "seconds_at_most": TARGET_SECONDS}
    target["met"] = seconds <= TARGET_SECONDS if target["applies"] else None
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "arch": args.arch, "tasks": args.tasks, "val_images": args.val_images,
                          "budget": default_budget(args.tasks), "population": args.population,
                          "generations": args.generations, "seed": args.seed},
               "results": {"seconds": round(seconds, 2), "setup_seconds": round(setup, 2),
                           "seconds_by_stage": metrics.get("seconds_by_stage"),
                           "evaluations": metrics.get("evaluations"),
                           "images_evaluated": metrics.get("real_evaluations", 0) * args.tasks * args.val_images},
               "target": target}
    path = write_result(args.out_dir, NAME, device, payload)
    print(f"map on {args.tasks} random {args.arch} tasks, {args.val_images} validation images each: {seconds:.1f} s "
          f"(stages {metrics.get('seconds_by_stage')}; evaluations {metrics.get('evaluations')}); target {target}")
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
