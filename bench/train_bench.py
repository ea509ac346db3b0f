"""Training-step benchmark: Pareto Merging (PM) against a plain fine-tuning step of the same tower.

What it measures, side by side in one run (interleaved: the order alternates every step):

* **pm**: one step of the real trainer (trainer/families/pareto/train.py): pref ~ Dirichlet(1),
  `ParetoMerge(pref)` builds the merged state (layer-wise base merge of K task vectors plus the
  rank-r preference term on every block's attn in_proj / out_proj), `task_objectives` runs the
  tower on K tasks x N images through `functional_call`, `loss_terms` (smooth Tchebycheff
  - cosine + ||G||^2 + diversity), backward, Adam on (lambda, A, B, G), clamp.
* **plain**: a plain forward + backward + Adam step of the same tower on the same images and the
  same entropy loss (sum over tasks), training all tower weights.

Both run under the trainer's own `trainer.objective.autocast` (bf16 on CUDA, nothing on CPU).
The tower is the real open_clip architecture (`--arch ViT-B-32` by default, built from its
open_clip config with no download; `tiny` for a seconds-long run) with random weights, random
task vectors, random heads and random images: timing does not depend on the values.

Reported: seconds per step (p50, mean, p99), images/s, the ratio PM / plain, and memory
(see bench/common.py): the peak over the step and its increase over the memory held before
it, plus the bytes each variant keeps between steps (weights, task vectors, grads, Adam
state); `standalone_peak_estimate` = kept + largest increase.

Target: PM / plain <= 1.3 per step on a GPU (the merge itself, K task vectors through one
tensordot per tensor, should be small against the forward/backward of K x N images).
On a CPU the script only reports (small sizes, see CPU_DEFAULTS, and one thread: bench/README.md).

    python bench/train_bench.py                            # GPU if present, else CPU defaults
    python bench/train_bench.py --arch tiny --steps 3      # seconds
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as `python bench/train_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import (add_common_args, machine_info, markdown_table, memory_method, mib,
                          now_iso, optimizer_tensors, run_benchmark, run_interleaved, summarize,
                          tensor_bytes, write_result)
from models_store.kinds.lowrank import target_names
from models_store.tower import build_tower, float_keys, head_logits, image_size, resolve_architecture
from models_store.zoo import Head
from trainer.methods.adamerging import LayerwiseMerge
from trainer.objective import autocast, entropy, task_objectives
from trainer.families.pareto.model import ParetoMerge
from trainer.families.pareto.train import ParetoConfig, loss_terms, optimizer

NAME = "train"
# (tasks, images per task, timed steps, warmup steps)
GPU_DEFAULTS = {"tasks": 8, "images_per_task": 32, "steps": 20, "warmup": 3}
CPU_DEFAULTS = {"tasks": 2, "images_per_task": 4, "steps": 6, "warmup": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-32", help="open_clip model name, or tiny / micro")
    p.add_argument("--tasks", type=int, default=None, help=f"K (default GPU {GPU_DEFAULTS['tasks']}, "
                                                           f"CPU {CPU_DEFAULTS['tasks']})")
    p.add_argument("--images-per-task", type=int, default=None,
                   help=f"default GPU {GPU_DEFAULTS['images_per_task']}, CPU {CPU_DEFAULTS['images_per_task']}")
    p.add_argument("--steps", type=int, default=None, help="timed steps of each variant")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each variant first")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="in_proj,out_proj", help="adapted projections (trainer's --targets)")
    p.add_argument("--classes", type=int, default=10, help="classes of every random head")
    p.add_argument("--lr", type=float, default=1e-3)
    add_common_args(p)
    return p


def random_heads(tasks: list[str], classes: int, dim: int, generator: torch.Generator,
                 device: torch.device) -> dict[str, Head]:
    # unit rows times CLIP's logit scale 100, as a zero-shot head with the scale folded in
    return {t: Head(weight=(F.normalize(torch.randn(classes, dim, generator=generator), dim=-1) * 100).to(device))
            for t in tasks}


def plain_entropies(tower: torch.nn.Module, heads: dict[str, Head], batches: dict[str, torch.Tensor],
                    images: torch.Tensor) -> torch.Tensor:
    """The plain counterpart of task_objectives: the tower's own forward, same heads and entropy."""
    with autocast(images.device):
        features = tower(images)
    sizes = [len(b) for b in batches.values()]
    return torch.stack([entropy(head_logits(f.float(), heads[t].weight, heads[t].bias))
                        for t, f in zip(batches, features.split(sizes))])


def setup(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    arch = resolve_architecture(args.arch)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    tasks = [f"task{i}" for i in range(args.tasks)]

    reference = build_tower(arch)
    pretrained = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    keys = float_keys(pretrained)
    # random task vectors on the device directly (8 x ViT-B/32 is 2.8 GB: no detour through the CPU)
    dgen = torch.Generator(device=device).manual_seed(args.seed + 1)
    vectors = {t: {k: torch.randn(pretrained[k].shape, generator=dgen, device=device) * 1e-3 for k in keys}
               for t in tasks}
    targets = target_names(keys, [w.strip() for w in args.targets.split(",") if w.strip()])
    cfg = ParetoConfig(rank=args.rank, targets=args.targets.split(","), lr=args.lr, seed=args.seed,
                       batch_size=args.images_per_task)
    model = ParetoMerge(LayerwiseMerge(pretrained, vectors, cfg.init, device), vectors, targets, cfg.rank, cfg.init,
                        cfg.lowrank_init, gen, device)
    del vectors
    pm_opt = optimizer(model, cfg)
    frozen = build_tower(arch).to(device)  # the trainer's tower: only its structure is used
    for p in frozen.parameters():
        p.requires_grad_(False)

    plain = reference.to(device)  # same starting weights as PM's pretrained
    plain_opt = torch.optim.Adam(plain.parameters(), lr=cfg.lr)

    heads = random_heads(tasks, args.classes, reference.output_dim, gen, device)
    size = image_size(arch)
    images = torch.randn(args.tasks * args.images_per_task, 3, size, size, generator=gen).to(device)
    batches = dict(zip(tasks, images.split(args.images_per_task)))
    pref_rng = np.random.Generator(np.random.PCG64(args.seed + 2))
    k = args.tasks

    def pm_step() -> torch.Tensor:
        pref = torch.tensor(pref_rng.dirichlet([cfg.alpha] * k), dtype=torch.float32, device=device)
        terms = loss_terms(task_objectives(frozen, model(pref), heads, batches), pref, model, cfg)
        pm_opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        pm_opt.step()
        model.clamp_()
        return terms["loss"].detach()

    def plain_step() -> torch.Tensor:
        loss = plain_entropies(plain, heads, batches, images).sum()
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()
        return loss.detach()

    def kept_bytes() -> dict[str, int]:
        """Bytes each variant holds between steps (weights, task vectors, grads, Adam state)."""
        pm_tensors = (list(model.base.pretrained.values()) + list(model.base.stacked.values())
                      + [p for p in model.parameters()] + [p.grad for p in model.parameters()]
                      + optimizer_tensors(pm_opt) + list(frozen.state_dict().values()))
        plain_tensors = (list(plain.state_dict().values()) + [p.grad for p in plain.parameters()]
                         + optimizer_tensors(plain_opt))
        return {"pm": tensor_bytes(pm_tensors), "plain": tensor_bytes(plain_tensors)}

    n_params = {"tower": sum(v.numel() for v in pretrained.values()),
                "pm_trainable": sum(p.numel() for p in model.parameters()),
                "pm_lowrank": sum(p.numel() for ps in (model.A, model.B, model.G) for p in ps),
                "adapted_tensors": len(targets)}
    return {"arch": arch, "steps": {"pm": pm_step, "plain": plain_step}, "kept_bytes": kept_bytes,
            "params": n_params, "image_size": size}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_benchmark(build_parser(), argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    threads = torch.get_num_threads()
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    s = setup(args, device)
    images_per_step = args.tasks * args.images_per_task
    samples = run_interleaved(s["steps"], args.steps, args.warmup, device, memory=True, keep_outputs=True)
    kept = s["kept_bytes"]()

    results: dict[str, Any] = {}
    for name, smp in samples.items():
        stats = summarize(smp.seconds)
        losses = [float(o) for o in smp.outputs]
        results[name] = {
            "seconds": smp.seconds, "stats": stats,
            "images_per_s_p50": images_per_step / stats["p50_s"],
            "images_per_s_mean": images_per_step / stats["mean_s"],
            "peak_bytes": smp.peak_bytes, "increase_bytes": smp.increase_bytes,
            "max_peak_bytes": max(smp.peak_bytes), "max_increase_bytes": max(smp.increase_bytes),
            "kept_bytes": kept[name], "standalone_peak_estimate_bytes": kept[name] + max(smp.increase_bytes),
            "losses": losses, "losses_finite": all(math.isfinite(v) for v in losses),
        }
    pm, plain = results["pm"]["stats"], results["plain"]["stats"]
    ratio = {"pm_over_plain_p50": pm["p50_s"] / plain["p50_s"], "pm_over_plain_mean": pm["mean_s"] / plain["mean_s"]}
    target = {"pm_over_plain_max": 1.3, "applies": device.type == "cuda",
              "met": ratio["pm_over_plain_p50"] <= 1.3 if device.type == "cuda" else None}
    payload = {
        "benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
        "config": {"argv": args.argv, "threads": threads, "arch_name": args.arch,
                   "architecture": s["arch"], "image_size": s["image_size"], "device": str(device),
                   "autocast": "bf16" if device.type == "cuda" else None, "tasks": args.tasks,
                   "images_per_task": args.images_per_task, "images_per_step": images_per_step,
                   "steps": args.steps, "warmup": args.warmup, "rank": args.rank, "targets": args.targets,
                   "classes": args.classes, "lr": args.lr, "seed": args.seed,
                   "defaults_used": "gpu" if device.type == "cuda" else "cpu",
                   "interleaving": "pm and plain alternate, order swapped every step"},
        "params": s["params"], "memory_method": memory_method(device),
        "results": results, "ratio": ratio, "target": target,
    }
    path = write_result(args.out_dir, NAME, device, payload)
    payload["path"] = str(path)

    rows = [[name, r["stats"]["p50_s"], r["stats"]["mean_s"], r["stats"]["p99_s"], r["images_per_s_p50"],
             mib(r["max_peak_bytes"]), mib(r["max_increase_bytes"]), mib(r["kept_bytes"])]
            for name, r in results.items()]
    print(f"\n{args.arch} on {device} ({payload['machine']['cuda_device'] or payload['machine']['cpu_model']}), "
          f"{args.tasks} tasks x {args.images_per_task} images, rank {args.rank}, "
          f"{args.steps} steps after {args.warmup} warm-up, {threads} CPU thread(s)\n")
    print(markdown_table(["variant", "step p50 (s)", "step mean (s)", "step p99 (s)", "images/s",
                          "peak (MiB)", "increase (MiB)", "kept (MiB)"], rows))
    print(f"\nPM / plain per step: {ratio['pm_over_plain_p50']:.3f} (p50), {ratio['pm_over_plain_mean']:.3f} (mean)"
          + (f"; target <= 1.3: {'met' if target['met'] else 'NOT met'}" if target["applies"] else
             "; target (<= 1.3) applies on a GPU only"))
    print(f"memory: {payload['memory_method']}")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
