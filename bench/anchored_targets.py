"""ReACT anchored at fine-tuned towers whose targets are stored in fewer bits (issue 38): for each
zoo (the seeds: `pmerge zoo --demo --seed S`, since ReACT itself draws nothing when its
calibration takes every image), `pmerge train react-anchored --towards-bits B` for B in 32 (dense,
the reference) and the quantised widths, each in its own process (its peak resident memory from
the kernel), then one `pmerge front` over the same preferences for all of them.

    python bench/anchored_targets.py --zoos runs/demo/zoo,runs/zoo-seed1,runs/zoo-seed2

Per (zoo, bits): the family's bytes on disk per file and in towers (one tower: the base's
float32 bytes), its resident device bytes when served (base tower, targets, the cache after the
whole grid), the training's peak RSS in towers, and the front against the dense family of the
same seed: hypervolume ratio, the equal preference's average, min_k accuracy at vertex k over
the fine-tuned tower's, and the largest drop of any task's accuracy at any preference (points).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          run_with_peak, temporary_store, write_result)
from models_store.preference import equal_preference  # noqa: E402
from models_store.simplex import vertices  # noqa: E402
from models_store.store import family_path, open_family  # noqa: E402
from models_store.zoo import Zoo  # noqa: E402
from trainer.evaluate import Evaluator  # noqa: E402
from trainer.front import FAMILY, FrontConfig, compute_front  # noqa: E402
from trainer.taskpool import TaskPool  # noqa: E402

NAME = "anchored-targets"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoos", required=True, help="comma-separated zoos of the same tasks, one per seed")
    p.add_argument("--bits", default="8,4,2", help="the quantised widths beside the dense reference")
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--calibration", type=int, default=None, help="react's calibration images (default: its own)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def train(zoo: str, store: Path, bits: int, device: torch.device, calibration) -> tuple[str, int]:
    """(family id, peak RSS bytes) of one `pmerge train react-anchored` in its own process."""
    argv = [sys.executable, "-m", "models_store.cli", "train", "react-anchored", "--zoo", zoo, "--store", str(store),
            "--towards-bits", str(bits), "--device", device.type]
    argv += ["--calibration", str(calibration)] if calibration else []
    out, peak, _ = run_with_peak(argv)
    return out.strip().splitlines()[-1], peak


def resident_bytes(family, prefs, device: torch.device) -> dict[str, int]:
    """What serving in float32 holds on the device after every preference of the grid: each file's
    part (Family.costs), and the cache of variants (towers and maps) under the default bound."""
    model = family.servable(device, torch.float32)
    images = torch.randn(len(prefs), 3, *[family.manifest.preprocess.image_size] * 2)
    variants = family.resolve(torch.stack([p.tensor() for p in prefs]))
    model.logits(images.to(device), variants, model.plan(variants))
    return {c.name: c.resident_bytes for c in family.costs(torch.float32)} | {"cache": model.cache.bytes}


def summary(rows: list[dict], widths: list[int]) -> dict:
    """Per width, each figure's [min, mean, max] over the zoos."""
    def over(values: list[float]) -> list[float]:
        return [min(values), sum(values) / len(values), max(values)]
    out = {}
    for bits in widths:
        mine = [r for r in rows if r["bits"] == bits]
        out[bits] = {"hypervolume_over_dense": over([r["hypervolume_over_dense"] for r in mine]),
                     "min_vertex_over_finetuned": over([min(r["vertex_over_finetuned"].values()) for r in mine]),
                     "equal_average": over([r["equal_average"] for r in mine]),
                     "largest_drop_points": over([r["largest_drop_points"] for r in mine]),
                     "disk_towers": over([r["disk_towers"] for r in mine]),
                     "resident_towers": over([r["resident_towers"] for r in mine]),
                     "train_peak_rss_towers": over([r["train_peak_rss_towers"] for r in mine])}
    return out


def spread(v: list[float]) -> str:
    return f"{v[1]:.3f} [{v[0]:.3f}-{v[2]:.3f}]"


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("anchored-targets-") as store:
        return measure(args, device, store)


def measure(args: argparse.Namespace, device: torch.device, store: Path) -> dict:
    widths = [32] + [int(b) for b in args.bits.split(",")]
    rows, finetuned_by_zoo = [], {}
    for seed, root in enumerate(args.zoos.split(",")):
        zoo = Zoo(root)
        tasks = zoo.tasks
        evaluator = Evaluator(zoo.manifest.architecture, zoo.heads, TaskPool(zoo).test, device)
        finetuned = finetuned_by_zoo[root] = {t: evaluator.accuracy(zoo.finetuned(t), [t])[t] for t in tasks}
        tower = sum(v.numel() * 4 for v in zoo.pretrained().values() if v.is_floating_point())
        trained = {bits: train(root, store, bits, device, args.calibration) for bits in widths}
        families = {bits: open_family(store, family_id) for bits, (family_id, _) in trained.items()}
        dense, *others = families.values()
        report = compute_front(dense, FrontConfig(grid=args.grid, random=0, baselines=[]), device,
                               families=others, log=lambda line: None)
        reference = report.models[FAMILY]
        for bits, family in families.items():
            model = report.models[FAMILY if family is dense else family.family_id]
            equal = model.point(equal_preference(tasks)).accuracy
            vertex = {t: model.point(v).accuracy[t] / finetuned[t] for t, v in zip(tasks, vertices(tasks))}
            drop = max(reference.point(p.preference).accuracy[t] - p.accuracy[t] for p in model.points for t in tasks)
            path = family_path(store, family.family_id)
            files = {f.name: f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors"}
            resident = resident_bytes(family, report.preferences, device)
            rows.append({"seed": seed, "zoo": str(Path(root).resolve()), "bits": bits, "family_id": family.family_id,
                         "hypervolume": model.hypervolume, "hypervolume_over_dense": model.hypervolume / reference.hypervolume,
                         "equal_average": sum(equal.values()) / len(equal), "vertex_over_finetuned": vertex,
                         "largest_drop_points": 100 * drop, "files_bytes": files,
                         "disk_towers": sum(files.values()) / tower,
                         "disk_towers_without_maps": (sum(files.values()) - files.get("maps.safetensors", 0)) / tower,
                         "resident_bytes": resident, "resident_towers": sum(resident.values()) / tower,
                         "train_peak_rss_bytes": trained[bits][1], "train_peak_rss_towers": trained[bits][1] / tower})
            print(f"seed {seed} bits {bits}: hv/dense {rows[-1]['hypervolume_over_dense']:.4f}, "
                  f"min vertex {min(vertex.values()):.3f}, drop {rows[-1]['largest_drop_points']:.2f}", flush=True)
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "tasks": tasks, "grid": args.grid, "tower_bytes": tower},
               "finetuned_on_own_task": finetuned_by_zoo, "results": rows, "summary": summary(rows, widths)}
    path = write_result(args.out_dir, NAME, device, payload)
    print(markdown_table(
        ["seed", "bits", "hv / dense", "equal avg %", "min vertex / ft", "largest drop (pt)", "disk (towers)",
         "disk w/o maps", "resident (towers)", "train RSS (towers)"],
        [[r["seed"], r["bits"], f"{r['hypervolume_over_dense']:.4f}", f"{100 * r['equal_average']:.1f}",
          f"{min(r['vertex_over_finetuned'].values()):.3f}", f"{r['largest_drop_points']:.2f}",
          f"{r['disk_towers']:.2f}", f"{r['disk_towers_without_maps']:.2f}", f"{r['resident_towers']:.2f}",
          f"{r['train_peak_rss_towers']:.0f}"] for r in rows]))
    print(markdown_table(["bits", "hv / dense", "min vertex / ft", "largest drop (pt)", "disk (towers)"],
                         [[b, spread(v["hypervolume_over_dense"]), spread(v["min_vertex_over_finetuned"]),
                           spread(v["largest_drop_points"]), spread(v["disk_towers"])]
                          for b, v in payload["summary"].items()]))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
