"""Where a JPEG is decoded changes what the tower sees by a few pixel levels: does it change the
answers? The test split of every task of a family, each image saved as a JPEG as a user would
upload it, classified twice by the family's servable at the equal preference: decoded on the
host (Pillow, `service.images.decode_image`) and on the device (`Preprocess.decode_jpegs`:
nvjpeg on CUDA, torchvision's libjpeg-turbo on the CPU), the engine's two paths.

    python bench/decode_accuracy.py --store runs/demo/families               # after `make demo`
    python bench/decode_accuracy.py --store runs/demo/families --device cuda

Reported per task: both accuracies, their difference in points, the share of images whose
prediction differs, and the pixels' mean and largest difference in levels. Target: every task's
accuracies within 0.1 point of each other.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import add_common_args, machine_info, markdown_table, now_iso, run_benchmark, write_result  # noqa: E402
from models_store.preference import equal_preference  # noqa: E402
from models_store.store import open_family  # noqa: E402
from service.engine.images import decode_image  # noqa: E402
from trainer.data.load import load_raw  # noqa: E402
from trainer.data.spec import parse_spec  # noqa: E402

NAME = "decode-accuracy"
TARGET_POINTS = 0.1


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--family", default=None, help="the family id (default: the store's newest)")
    p.add_argument("--test-limit", type=int, default=None, help="the first N test images of each task (default all)")
    p.add_argument("--quality", type=int, default=90, help="the JPEGs' quality")
    p.add_argument("--batch", type=int, default=256)
    add_common_args(p)
    return run_benchmark(p, argv, run)


def jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def run(args: argparse.Namespace, device: torch.device) -> dict:
    family = open_family(args.store, args.family)
    pre = family.manifest.preprocess
    servable = family.servable(device, torch.float32)
    k = len(family.tasks)
    rows = {}
    for index, task in enumerate(family.manifest.tasks):
        if task.data is None or parse_spec(task.data).kind == "folder":
            print(f"{task.name}: skipped (its data is {'not named' if task.data is None else 'a folder of files'})")
            continue
        raw = load_raw(parse_spec(task.data), "test")
        images, labels = raw.images[:args.test_limit], np.asarray(raw.labels[:args.test_limit])
        files = [jpeg(np.asarray(im), args.quality) for im in images]
        host = np.stack([decode_image(f, pre, 1 << 40) for f in files])
        on_device = np.concatenate([torch.stack(pre.decode_jpegs(
            [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files[s:s + args.batch]], device)).cpu().numpy()
            for s in range(0, len(files), args.batch)])
        preds = {}
        equal = equal_preference(family.tasks).tensor()
        for name, pixels in (("host", host), ("device", on_device)):
            out = []
            for s in range(0, len(pixels), args.batch):
                x = pre.normalize(torch.from_numpy(pixels[s:s + args.batch]).to(device))
                out.append(servable.logits(x, family.resolve(equal.expand(len(x), k)))[task.name].argmax(1).cpu().numpy())
            preds[name] = np.concatenate(out)
        diff = np.abs(host.astype(np.int16) - on_device.astype(np.int16))
        acc = {name: float((p == labels).mean()) for name, p in preds.items()}
        rows[task.name] = {"images": len(files), "accuracy_host": acc["host"], "accuracy_device": acc["device"],
                           "difference_points": 100 * (acc["device"] - acc["host"]),
                           "predictions_differ": float((preds["host"] != preds["device"]).mean()),
                           "pixel_levels_mean": float(diff.mean()), "pixel_levels_max": int(diff.max())}
    worst = max(abs(r["difference_points"]) for r in rows.values())
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "family": family.family_id, "preference": equal_preference(family.tasks).canonical, "quality": args.quality,
                          "device": str(device), "test_limit": args.test_limit},
               "results": rows,
               "target": {"what": f"|accuracy difference| <= {TARGET_POINTS} point on every task",
                          "value": worst, "met": worst <= TARGET_POINTS}}
    path = write_result(args.out_dir, NAME, device, payload)
    print(markdown_table(["task", "images", "host", "device", "difference (points)", "predictions differ",
                          "pixel levels mean / max"],
                         [[t, r["images"], r["accuracy_host"], r["accuracy_device"], r["difference_points"],
                           r["predictions_differ"], f"{r['pixel_levels_mean']:.3f} / {r['pixel_levels_max']}"]
                          for t, r in rows.items()]))
    print(f"target: {payload['target']['what']}: worst {worst:.3f} {'met' if payload['target']['met'] else 'NOT met'}")
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
