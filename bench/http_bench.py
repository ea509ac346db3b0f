"""HTTP end to end against the engine alone (issue 16): what everything that is not the tower costs.

    python bench/http_bench.py                     # ViT-B-32, 2 families, 128 images a round

A random zoo of the architecture (map_speed's: open_clip's initialisation plus noise, nothing
downloaded) gives two families of different kinds: `lowrank` (random rank-16 factors on every
block's attention, as serve_bench's) and `point-set` (ta-pref trained on the zoo). A real
`pmerge serve` process serves both (`--families`); the same JPEG images, each request one image
with its own random preference, `--concurrency` requests in flight (httpx), measured interleaved
per round (the order rotates):

* **http**: every image a POST /classify to the first family (decode, batching, the forward,
  top-k, JSON, HTTP), images/s = images / wall time of the round;
* **engine**: the same family's servable (the engine's forward, `Servable.logits`) on the same
  images already decoded, in batches of the server's max_batch with the same preferences;
* **http-2**, **engine-2**: the same with the requests spread over both families
  (/families/<id>/classify), and both servables on their shares.

The ratio http/engine (per round, median and spread) is the share of the tower's throughput that
reaches a client through the service. Both the server and the engine run torch on --threads
(default one, as the other CPU benchmarks); the client shares the machine with the server.
Absolute images/s mean something only on the device that will serve.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, round_ratios,  # noqa: E402
                          run_benchmark, spread_text, summarize, temporary_store, write_result)
from bench.map_speed import random_zoo  # noqa: E402
from bench.serve_bench import random_family  # noqa: E402
from models_store.family import FamilyManifest, now_iso as family_time, publish_family  # noqa: E402
from models_store.kinds.lowrank import family_files  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.tower import build_tower  # noqa: E402
from service.images import decode_image  # noqa: E402
from trainer.families import LearnContext, get_family_learner  # noqa: E402

NAME = "http"
MAX_PIXELS = 10 ** 8


def lowrank_family(zoo, store: Path, rank: int, seed: int) -> str:
    tower = build_tower(zoo.manifest.architecture)
    tower.load_state_dict(zoo.pretrained())
    factors = random_family(tower, len(zoo.tasks), rank, torch.Generator().manual_seed(seed))
    family_id = "lowrank-random"
    targets = list(factors)
    manifest = FamilyManifest(family_id=family_id, created=family_time(), method="random-lowrank",
                              hyperparameters={"rank": rank, "seed": seed}, architecture=zoo.manifest.architecture,
                              preprocess=zoo.manifest.preprocess, tasks=zoo.manifest.tasks, kind="lowrank",
                              kind_params={"rank": rank, "targets": targets}, metrics={})
    publish_family(store, manifest, family_files(zoo.pretrained(), factors), zoo.heads)
    return family_id


def jpeg_images(count: int, size: int, seed: int) -> list[bytes]:
    """Smooth random pictures (a photo's size and JPEG's cost, not noise's)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def start_server(store: Path, families: list[str], port: int, threads: int, max_batch: int) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PMERGE_DOWNLOAD_CACHE_DIR": str(store / ".downloads")}
    server = subprocess.Popen([sys.executable, "-m", "models_store.cli", "serve", "--store", str(store),
                               "--family", families[0], "--families", ",".join(families), "--max-families",
                               str(len(families)), "--device", "cpu", "--port", str(port), "--max-batch",
                               str(max_batch), "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not become ready")
        time.sleep(0.2)


def send_all(url: str, jobs: list[tuple[str, bytes, str]], concurrency: int) -> None:
    async def run():
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=300,
                                     limits=httpx.Limits(max_connections=concurrency)) as client:
            async def one(prefix, image, pref):
                async with limit:
                    r = await client.post(f"{prefix}/classify", params={"pref": pref, "top_k": 1},
                                          files=[("files", ("i.jpg", image, "image/jpeg"))])
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.status_code}: {r.text}")
            await asyncio.gather(*(one(*job) for job in jobs))
    asyncio.run(run())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--images", type=int, default=128, help="images per round and variant")
    p.add_argument("--image-size", type=int, default=256, help="the JPEGs' side (the service resizes them)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--max-batch", type=int, default=64, help="the server's max_batch, and the engine's batches")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=8765)
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    if device.type != "cpu":
        raise SystemExit("http_bench measures the CPU server (--device cpu)")
    with temporary_store("http-bench-") as work:
        return measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> dict:
    zoo = random_zoo(work / "zoo", args.arch, args.tasks, "builtin:digits", args.seed)
    store = work / "store"
    lowrank = lowrank_family(zoo, store, 16, args.seed)
    learner = get_family_learner("ta-pref")
    point_set = learner(LearnContext(zoo, store, device=torch.device("cpu"), progress=False),
                        learner.config(points={"grid": 2, "random": 2, "seed": args.seed})).name
    families = [open_family(store, f) for f in (lowrank, point_set)]
    tasks, k = zoo.tasks, len(zoo.tasks)
    images = jpeg_images(args.images, args.image_size, args.seed)
    prefs = torch.distributions.Dirichlet(torch.ones(k)).sample((args.images,))
    pref_text = [",".join(f"{t}:{w:.4f}" for t, w in zip(tasks, row.tolist())) for row in prefs]
    pixels = torch.stack([decode_image(b, zoo.manifest.preprocess, MAX_PIXELS) for b in images])
    threads = torch.get_num_threads()
    servables = [f.servable(torch.device("cpu"), torch.float32, 4) for f in families]
    half = [i % 2 for i in range(args.images)]  # which family each image of the two-family rounds goes to
    server = start_server(store, [f.family_id for f in families], args.port, threads, args.max_batch)
    url = f"http://127.0.0.1:{args.port}"

    def engine(which: list[int]) -> None:
        with torch.inference_mode():
            for f, servable in enumerate(servables):
                rows = [i for i, w in enumerate(which) if w == f]
                for start in range(0, len(rows), args.max_batch):
                    chunk = torch.tensor(rows[start:start + args.max_batch], dtype=torch.long)
                    if len(chunk):
                        servable.logits(pixels[chunk], prefs[chunk])

    variants = {
        "http": lambda: send_all(url, [("", b, p) for b, p in zip(images, pref_text)], args.concurrency),
        "engine": lambda: engine([0] * args.images),
        "http-2": lambda: send_all(url, [(f"/families/{families[w].family_id}", b, p)
                                         for b, p, w in zip(images, pref_text, half)], args.concurrency),
        "engine-2": lambda: engine(half),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for fn in variants.values():  # warm-up: every family loaded and every path run once
            fn()
        names = list(variants)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                variants[name]()
                seconds[name].append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = {name: summarize(s) | {"seconds": s} for name, s in seconds.items()}
    for row in rows.values():
        row["images_per_s"] = args.images / row["p50_s"]
    ratios = {"http_over_engine": round_ratios(seconds["http"], seconds["engine"]),
              "http2_over_engine2": round_ratios(seconds["http-2"], seconds["engine-2"])}
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(torch.device("cpu")),
               "config": {"argv": args.argv, "arch": args.arch, "tasks": k, "images": args.images,
                          "image_size": args.image_size, "concurrency": args.concurrency,
                          "max_batch": args.max_batch, "repeats": args.repeats, "threads": threads,
                          "families": {f.family_id: f.manifest.kind for f in families}},
               "results": rows, "ratios": ratios}
    path = write_result(args.out_dir, NAME, torch.device("cpu"), payload)
    print(markdown_table(["variant", "images/s (median round)", "min s", "max s"],
                         [[n, f"{r['images_per_s']:.1f}", f"{r['min_s']:.2f}", f"{r['max_s']:.2f}"]
                          for n, r in rows.items()]))
    print(f"http / engine: {spread_text(ratios['http_over_engine'])}; two families: "
          f"{spread_text(ratios['http2_over_engine2'])} (median [IQR] over {args.repeats} rounds)")
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
