"""What a request costs beyond the model: pmerge over HTTP against the framework's floor and the
engine alone, measured interleaved in one run with the same client and images.

    python bench/http_bench.py --arch tiny --device cpu            # this machine's targets
    python bench/http_bench.py --arch ViT-B-32 --device cuda       # gpu.sh's request-path step

A random zoo of the architecture gives a random `lowrank` family (rank 16 on every block's
attention). Servers, started once, each its own processes: `pmerge serve` with each front-end
count of `--front-ends` (0: one process does all), `bench/bare_endpoint.py`: FastAPI reading the
multipart upload and running pmerge's own decoder, answering a constant (the framework's floor),
and with `--peers` the servers a user would pick instead, each serving the one tower of the equal
preference with the same decoder and its own batching across requests (bench/peers/: LitServe,
MLServer; each in its own environment, made by `bench/peers/setup.sh litserve mlserver`).
Every round sends the same JPEGs (`--images`, sides `--image-sizes`), `--concurrency` requests in
flight from one httpx client, to each server at 1 and at 8 images per request (each image its own
random preference at 1; a request's preference at 8), and also measures, in this process:

* **decode**: service/engine/images.py's decoder alone on the same files, one thread;
* **engine**: the family's servable alone on the decoded images, in batches of `--max-batch`.

Per round and variant: images/s, and the server processes' CPU seconds per image (engine and
front ends, from /proc), which does not depend on how busy the machine is, split by pmerge's own
counters (`pmerge_stage_cpu_seconds_total`: its decoding threads, its forward thread; the servers
run one intra-op thread, so that is all of the forward) into decode, forward and the rest: HTTP
parsing, multipart, IPC, queueing, futures, top-k and JSON, per image and per request. Reported: the median
over the rounds and per-round ratios with their spread. Targets on a CPU with the tiny tower:
pmerge at 1 image per request >= 0.9 x bare; at 8 >= 0.8 x min(bare, engine); the server's CPU per
image beyond decoding and the forward at most half of decoding alone's. On a GPU: http >= 0.8 x engine at 8 per request.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, percentile, round_ratios,  # noqa: E402
                          run_benchmark, spread_text, temporary_store, write_result)
from bench.map_speed import random_zoo  # noqa: E402
from bench.serve_bench import random_family  # noqa: E402
from models_store.family import FamilyManifest, now_iso as family_time, publish_family  # noqa: E402
from models_store.kinds.lowrank import family_files  # noqa: E402
from models_store.merged import write_checkpoint  # noqa: E402
from models_store.preference import equal_preference  # noqa: E402
from models_store.store import open_family  # noqa: E402
from models_store.tower import build_tower  # noqa: E402
from service.engine.images import decode_image  # noqa: E402

NAME = "http"
PORT = "{port}"  # in a server's command line: the free port it is given
PEER_READY = {"litserve": "/health", "mlserver": "/v2/health/ready"}  # each peer's readiness route
MAX_PIXELS = 10 ** 8
ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def lowrank_family(zoo, store: Path, rank: int, seed: int) -> str:
    tower = build_tower(zoo.manifest.architecture)
    tower.load_state_dict(zoo.pretrained())
    factors = random_family(tower, len(zoo.tasks), rank, torch.Generator().manual_seed(seed))
    family_id = "lowrank-random"
    manifest = FamilyManifest(family_id=family_id, created=family_time(), method="random-lowrank",
                              hyperparameters={"rank": rank, "seed": seed}, architecture=zoo.manifest.architecture,
                              preprocess=zoo.manifest.preprocess, tasks=zoo.manifest.tasks, kind="lowrank",
                              kind_params={"rank": rank, "targets": list(factors)}, metrics={})
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the front ends of a `pmerge serve`)."""
    out, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        out += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICK


class Server:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str]):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        # a session of its own: stopping it stops the processes it started (a peer's workers)
        self.proc = subprocess.Popen(argv, env=os.environ | env, cwd=ROOT, start_new_session=True)

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + path, timeout=2).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready")
            time.sleep(0.2)

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.proc.pid))

    def counters(self) -> dict[str, float]:
        """pmerge's own: CPU seconds of its decode and forward threads, /classify requests."""
        out = {"decode": 0.0, "forward": 0.0, "requests": 0.0}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("pmerge_stage_cpu_seconds_total{"):
                out["decode" if 'stage="decode"' in line else "forward"] += float(line.split()[-1])
            elif line.startswith("pmerge_http_requests_total{") and 'route="/classify"' in line:
                out["requests"] += float(line.split()[-1])
        return out

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 40), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


def send_all(url: str, images: list[bytes], prefs: list[str], per_request: int, concurrency: int) -> None:
    async def run():
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=300,
                                     limits=httpx.Limits(max_connections=concurrency)) as client:
            async def one(start: int):
                async with limit:
                    files = [("files", (f"{i}.jpg", images[i], "image/jpeg"))
                             for i in range(start, min(start + per_request, len(images)))]
                    r = await client.post("/classify", params={"pref": prefs[start], "top_k": 1}, files=files)
                    if r.status_code != 200:
                        raise RuntimeError(f"{url}: {r.status_code}: {r.text[:300]}")
            await asyncio.gather(*(one(s) for s in range(0, len(images), per_request)))
    asyncio.run(run())


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="tiny")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--images", type=int, default=256, help="images per round and variant")
    p.add_argument("--image-sizes", default="256", help="the JPEGs' sides, comma-separated (each its own rows)")
    p.add_argument("--per-request", default="1,8", help="images per request")
    p.add_argument("--front-ends", default="0,1", help="front-end counts of the pmerge servers")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--max-batch", type=int, default=64, help="the server's max_batch, and the engine's batches")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default=None, help="the server's and the engine's dtype (default: bf16 on CUDA)")
    p.add_argument("--peers", default="", help="peer servers beside pmerge, comma-separated: litserve, mlserver "
                                               "(their environments: bench/peers/setup.sh)")
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    with temporary_store("http-bench-") as work:
        return measure(args, device, work)


def measure(args: argparse.Namespace, device: torch.device, work: Path) -> dict:
    zoo = random_zoo(work / "zoo", args.arch, args.tasks, "builtin:digits", args.seed)
    store = work / "store"
    family = open_family(store, lowrank_family(zoo, store, 16, args.seed))
    pre, k = zoo.manifest.preprocess, len(zoo.tasks)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    sizes = [int(s) for s in args.image_sizes.split(",")]
    per_request = [int(n) for n in args.per_request.split(",")]
    fronts = [int(f) for f in args.front_ends.split(",")]
    prefs = torch.distributions.Dirichlet(torch.ones(k)).sample((args.images,))
    pref_text = [",".join(f"{w:.4f}" for w in row.tolist()) for row in prefs]
    threads = torch.get_num_threads()
    # servers: one intra-op thread, so the forward thread's CPU time is all of the forward's
    env = {"OMP_NUM_THREADS": "1", "PMERGE_DOWNLOAD_CACHE_DIR": str(store / ".downloads")}
    def started(name: str, argv: list[str]) -> Server:  # each on a port the system says is free now
        port = free_port()
        return Server(name, [str(port) if a == PORT else a for a in argv], port, env)
    servers = [started(f"pmerge-f{f}", [sys.executable, "-m", "models_store.cli", "serve", "--store", str(store),
                                        "--device", device.type, "--dtype", dtype_name, "--port", PORT,
                                        "--max-batch", str(args.max_batch), "--front-ends", str(f), "--log-level",
                                        "warning"]) for f in fronts]
    bare = {s: started(f"bare-{s}", [sys.executable, "bench/bare_endpoint.py", PORT, str(pre.image_size)])
            for s in sizes}
    servable = family.servable(device, dtype)
    checkpoint = work / "peer.safetensors"  # the one tower a peer serves: the equal preference's download
    write_checkpoint(checkpoint, family, equal_preference(family.tasks))
    names = [p for p in args.peers.split(",") if p]
    peers = {s: [started(name, [str(ROOT / ".venv-peers" / name / "bin" / "python"), f"bench/peers/{name}_peer.py",
                                PORT, str(checkpoint), str(pre.image_size), str(args.max_batch)]) for name in names]
             for s in sizes}
    rows = {}
    try:
        for server in servers:
            server.wait_ready("/readyz")
        for server in bare.values():
            server.wait_ready("/docs")
        for server in (p for ps in peers.values() for p in ps):
            server.wait_ready(PEER_READY[server.name])
        for size in sizes:
            rows[size] = measure_size(args, size, servers, bare[size], peers[size], servable, pre,
                                      family.resolve(prefs), pref_text, per_request, device)
    finally:
        for server in [*servers, *bare.values(), *(p for ps in peers.values() for p in ps)]:
            server.stop()
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "arch": args.arch, "tasks": k, "images": args.images,
                          "image_sizes": sizes, "per_request": per_request, "fronts": fronts,
                          "concurrency": args.concurrency, "max_batch": args.max_batch, "repeats": args.repeats,
                          "threads": threads, "dtype": dtype_name, "device": str(device),
                          "interleaving": "every variant once per round, the order rotated every round"},
               "results": {str(s): r for s, r in rows.items()}, "target": targets(rows, device, fronts)}
    path = write_result(args.out_dir, NAME, device, payload)
    report(payload)
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


def measure_size(args, size: int, servers: list[Server], bare: Server, peers: list[Server], servable, pre,
                 served: list, pref_text, per_request: list[int], device: torch.device) -> dict:
    images = jpeg_images(args.images, size, args.seed + size)
    decoded = [decode_image(b, pre, MAX_PIXELS) for b in images]
    pixels = pre.normalize(torch.from_numpy(np.stack(decoded)))

    def engine() -> None:
        for start in range(0, len(images), args.max_batch):
            chunk = slice(start, start + args.max_batch)
            logits = servable.logits(pixels[chunk], served[chunk])
            torch.cat(list(logits.values()), 1).cpu()  # waits for the device, as the server's engine does

    variants: dict[str, tuple[Callable[[], None], Optional[Server]]] = {
        "decode": (lambda: [decode_image(b, pre, MAX_PIXELS) for b in images], None),
        "engine": (engine, None)}
    for n in per_request:
        variants[f"bare-{n}"] = ((lambda n: lambda: send_all(bare.url, images, pref_text, n, args.concurrency))(n), bare)
        for server in (*servers, *peers):
            variants[f"{server.name}-{n}"] = ((lambda s, n: lambda: send_all(s.url, images, pref_text, n,
                                                                             args.concurrency))(server, n), server)
    for fn, _ in variants.values():  # warm-up: every path run once
        fn()
    seconds = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    stages = {name: [] for name in variants if name.startswith("pmerge-")}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, server = variants[name]
            counted = name in stages
            before_stages = server.counters() if counted else None
            before_cpu = server.cpu() if server is not None else time.process_time()
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
            after_cpu = server.cpu() if server is not None else time.process_time()
            cpu[name].append((after_cpu - before_cpu) / len(images))
            if counted:
                after = server.counters()
                stages[name].append({k: after[k] - before_stages[k] for k in after})
    out: dict = {"variants": {}}
    for name in names:
        out["variants"][name] = {"seconds": seconds[name], "images_per_s": len(images) / percentile(seconds[name], 50),
                                 "cpu_s_per_image": cpu[name], "cpu_ms_per_image_p50": 1e3 * percentile(cpu[name], 50)}
    decode_cpu = percentile(cpu["decode"], 50)
    ratios = {}
    for name in names:
        if name.startswith("pmerge-"):
            n = int(name.rsplit("-", 1)[1])
            # throughput ratios per round (round_ratios: x's images/s over y's, from their seconds)
            ratios[f"{name}/bare-{n}"] = round_ratios(seconds[name], seconds[f"bare-{n}"])
            ratios[f"{name}/engine"] = round_ratios(seconds[name], seconds["engine"])
            for peer in peers:
                ratios[f"{name}/{peer.name}-{n}"] = round_ratios(seconds[name], seconds[f"{peer.name}-{n}"])
            slower = [max(a, b) for a, b in zip(seconds[f"bare-{n}"], seconds["engine"])]  # the lower throughput
            ratios[f"{name}/min(bare,engine)"] = round_ratios(seconds[name], slower)
            beyond = [c - decode_cpu for c in cpu[name]]
            v = out["variants"][name]
            v["cpu_beyond_decode_over_decode"] = percentile(beyond, 50) / decode_cpu
            # the server's own split: its decode and forward threads' CPU time, the rest is the request path
            n_images = len(images)
            rest = [c * n_images - st["decode"] - st["forward"] for c, st in zip(cpu[name], stages[name])]
            v["server_ms_per_image"] = {
                "decode": 1e3 * percentile([st["decode"] for st in stages[name]], 50) / n_images,
                "forward": 1e3 * percentile([st["forward"] for st in stages[name]], 50) / n_images,
                "rest": 1e3 * percentile(rest, 50) / n_images}
            v["server_ms_per_request_rest"] = 1e3 * percentile(
                [r / st["requests"] for r, st in zip(rest, stages[name])], 50)
            v["rest_over_decode"] = v["server_ms_per_image"]["rest"] / (1e3 * decode_cpu)
    out["ratios"] = ratios
    return out


def targets(rows: dict, device: torch.device, fronts: list[int]) -> dict:
    checks = []
    for size, r in rows.items():
        for name, v in r["variants"].items():
            if not name.startswith("pmerge-"):
                continue
            n = int(name.rsplit("-", 1)[1])
            if device.type == "cuda":
                if n == 8:
                    ratio = r["ratios"][f"{name}/engine"]["median"]
                    checks.append({"size": size, "variant": name, "what": "http / engine >= 0.8", "value": ratio,
                                   "met": ratio >= 0.8})
                continue
            if n == 1:
                ratio = r["ratios"][f"{name}/bare-1"]["median"]
                checks.append({"size": size, "variant": name, "what": "http / bare >= 0.9", "value": ratio,
                               "met": ratio >= 0.9})
                for key, spread in r["ratios"].items():  # the aim beside the servers a user would pick instead
                    peer = key.rpartition("/")[2]
                    if key.startswith(f"{name}/") and peer.rsplit("-", 1)[0] in PEER_READY:
                        checks.append({"size": size, "variant": name, "what": f"http / {peer} >= 1.5 (aim)",
                                       "value": spread["median"], "met": spread["median"] >= 1.5})
            elif n == 8:
                ratio = r["ratios"][f"{name}/min(bare,engine)"]["median"]
                checks.append({"size": size, "variant": name, "what": "http / min(bare, engine) >= 0.8",
                               "value": ratio, "met": ratio >= 0.8})
            checks.append({"size": size, "variant": name,
                           "what": "server CPU beyond decoding and the forward <= 0.5 x decoding's",
                           "value": v["rest_over_decode"], "met": v["rest_over_decode"] <= 0.5})
    return {"checks": checks, "met": {c["variant"] + " " + c["what"]: c["met"] for c in checks}}


def report(payload: dict) -> None:
    for size, r in payload["results"].items():
        split = lambda v, k: v["server_ms_per_image"][k] if "server_ms_per_image" in v else ""  # noqa: E731
        table = [[name, v["images_per_s"], v["cpu_ms_per_image_p50"], split(v, "decode"), split(v, "forward"),
                  split(v, "rest"), v.get("server_ms_per_request_rest", ""), v.get("rest_over_decode", "")]
                 for name, v in r["variants"].items()]
        print(f"\n{size} px JPEGs, {payload['config']['images']} images a round, {payload['config']['repeats']} rounds\n")
        print(markdown_table(["variant", "images/s (median)", "CPU ms/image", "of it decode", "forward", "rest",
                              "rest ms/request", "rest / decode alone"], table))
        print()
        print(markdown_table(["ratio", "median [IQR]"], [[k, spread_text(v)] for k, v in r["ratios"].items() if v]))
    for c in payload["target"]["checks"]:
        print(f"target {c['variant']} ({c['size']} px): {c['what']}: {c['value']:.3f} {'met' if c['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
