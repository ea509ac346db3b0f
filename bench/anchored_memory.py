"""What `react-anchored` costs at the size users have (issue 38): a zoo of K random towers of a
real architecture (bench/map_speed.py's: open_clip's initialisation plus noise; cost, not
quality), then `pmerge train react-anchored --towards-bits B` for each B, each in its own
process: its peak resident memory from the kernel, the family's bytes on disk per file, and
what serving keeps (Family.costs) in bfloat16 and float32. In towers: one tower is the
architecture's float32 bytes, except `served`, in towers of the serving dtype: on the device (the
resident tensors and the default device cache's bound together) and in host memory.

    python bench/anchored_memory.py --arch ViT-B-32 --tasks 8 --bits 4,32
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, run_benchmark,  # noqa: E402
                          run_with_peak, write_result)
from bench.map_speed import random_images, random_zoo  # noqa: E402
from models_store.store import open_family  # noqa: E402

NAME = "anchored-memory"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--bits", default="4,32")
    p.add_argument("--calibration", type=int, default=32, help="react's calibration images per task")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def train(zoo: Path, store: Path, bits: int, args: argparse.Namespace, device: torch.device) -> tuple[str, int, float]:
    """(family id, peak RSS bytes, seconds) of one `pmerge train react-anchored` in its own process."""
    argv = [sys.executable, "-m", "models_store.cli", "train", "react-anchored", "--zoo", str(zoo), "--store",
            str(store), "--towards-bits", str(bits), "--calibration", str(args.calibration), "--device", device.type]
    out, peak, seconds = run_with_peak(argv)
    return out.strip().splitlines()[-1], peak, seconds


def served(family, dtype: torch.dtype, costs) -> dict:
    """What serving in `dtype` keeps, in towers of that dtype: on the device (its resident tensors
    and the default cache's bound together) and in host memory."""
    tower = family.tower_bytes(dtype)
    resident, host = sum(c.resident_bytes for c in costs), sum(c.host_bytes for c in costs)
    cache = family.device_cache_bytes(dtype)
    return {"tower_bytes": tower, "resident_towers": resident / tower, "cache_towers": cache / tower,
            "device_towers": (resident + cache) / tower, "host_towers": host / tower}


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory(prefix="anchored-memory-") as work:
        root = Path(work)
        spec = random_images(root / "images", args.calibration, args.seed, test=args.calibration)
        zoo = random_zoo(root / "zoo", args.arch, args.tasks, spec, args.seed)
        tower = sum(v.numel() * 4 for v in zoo.pretrained().values() if v.is_floating_point())
        rows = []
        for bits in (int(b) for b in args.bits.split(",")):
            family_id, rss, seconds = train(zoo.root, root / "store", bits, args, device)
            family = open_family(root / "store", family_id)
            costs = {str(d).removeprefix("torch."): family.costs(d) for d in (torch.bfloat16, torch.float32)}
            files = {c.name: c.disk_bytes for c in costs["float32"]}
            rows.append({"bits": bits, "family_id": family_id, "train_seconds": round(seconds, 1),
                         "train_peak_rss_bytes": rss, "train_peak_rss_towers": rss / tower,
                         "files_bytes": files, "disk_towers": sum(files.values()) / tower,
                         "disk_towers_without_maps": (sum(files.values()) - files["maps.safetensors"]) / tower,
                         "resident_bytes": {d: {c.name: c.resident_bytes for c in cs} for d, cs in costs.items()},
                         "resident_towers": {d: sum(c.resident_bytes for c in cs) / tower for d, cs in costs.items()},
                         "served": {d: served(family, getattr(torch, d), cs) for d, cs in costs.items()}})
            print(f"bits {bits}: peak RSS {rss / tower:.1f} towers, disk {rows[-1]['disk_towers']:.2f} towers",
                  flush=True)
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "arch": args.arch, "tasks": args.tasks, "calibration": args.calibration,
                          "tower_bytes": tower},
               "results": rows}
    path = write_result(args.out_dir, NAME, device, payload)
    print(markdown_table(
        ["bits", "disk (towers)", "disk without maps", "served bf16: device (bf16 towers)", "of it, the cache",
         "host", "train peak RSS (towers)", "train s"],
        [[r["bits"], f"{r['disk_towers']:.2f}", f"{r['disk_towers_without_maps']:.2f}",
          f"{r['served']['bfloat16']['device_towers']:.2f}", f"{r['served']['bfloat16']['cache_towers']:.2f}",
          f"{r['served']['bfloat16']['host_towers']:.2f}", f"{r['train_peak_rss_towers']:.1f}", r["train_seconds"]]
         for r in rows]))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
