"""Our TSV-M, Iso-C, Iso-CTS and WUDI against FusionBench's own functions on the same task vectors
(the zoo's): per method, the largest |ours - theirs| / max |theirs| over the merged task vector's
tensors, and the wall time of each, interleaved over --repeats rounds (bench.common.run_interleaved).

    bash bench/fusionbench-site.sh
    PYTHONPATH=.cache/fusionbench-site .venv/bin/python bench/fusionbench_check.py --zoo runs/demo/zoo

Both sides get the same linear layers: FusionBench treats every 2-D tensor as a matrix, so the 2-D
tensors that are not linear layers (the positional embedding) go in its `exclude_keys`, which it
averages as we do. Inputs are float32 task vectors on the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, round_ratios,  # noqa: E402
                          run_benchmark, run_interleaved, write_result)
from models_store.zoo import Zoo  # noqa: E402
from trainer.methods.iso import iso_c_matrix, iso_cts_matrix  # noqa: E402
from trainer.methods.linear_layers import is_linear, merge_layers  # noqa: E402
from trainer.methods.tsv_m import tsv_matrix  # noqa: E402
from trainer.methods.wudi import wudi_matrix  # noqa: E402
from trainer.pool import ModelPool  # noqa: E402

NAME = "fusionbench-check"


def fusionbench():
    try:
        from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
        from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
        from fusion_bench.method.wudi.wudi import wudi_merging
    except ImportError as e:
        raise SystemExit(f"FusionBench is not importable ({e}): run bash bench/fusionbench-site.sh and set "
                         "PYTHONPATH=.cache/fusionbench-site") from None
    return iso_c, iso_cts, compute_and_sum_svd_mem_reduction, wudi_merging


def quiet(fn, *args, **kwargs):
    """FusionBench prints a line per tensor."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def relative_difference(ours: dict, theirs: dict) -> tuple[float, str]:
    def difference(k: str) -> float:
        a, b = ours[k].detach().float(), theirs[k].detach().float()
        return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)

    return max((difference(k), k) for k in theirs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wudi-steps", type=int, default=300)
    add_common_args(p)
    return run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    iso_c, iso_cts, tsv, wudi_merging = fusionbench()
    zoo = Zoo(args.zoo)
    vectors = ModelPool(zoo).task_vectors
    listed = list(vectors.values())
    exclude = [k for k, v in listed[0].items() if v.ndim == 2 and not is_linear(k, v)]
    where = "cpu"
    pairs = {
        "tsv-m": (lambda: merge_layers(vectors, lambda d: tsv_matrix(d, 1 / len(listed))),
                  lambda: quiet(tsv, listed, exclude_keys=exclude, accelerator=where)),
        "iso-c": (lambda: merge_layers(vectors, iso_c_matrix),
                  lambda: quiet(iso_c, listed, accelerator=where, exclude_keys=exclude)),
        "iso-cts": (lambda: merge_layers(vectors, lambda d: iso_cts_matrix(d, 0.8)),
                    lambda: quiet(iso_cts, listed, 0.8, accelerator=where, exclude_keys=exclude)),
        "wudi": (lambda: merge_layers(vectors, lambda d: wudi_matrix(d, args.wudi_steps, 1e-5, torch.device(where))),
                 lambda: quiet(wudi_merging, listed, accelerator=where, iter_num=args.wudi_steps,
                               exclude_keys=exclude)),
    }
    results = {}
    for name, (ours_fn, theirs_fn) in pairs.items():
        samples = run_interleaved({"pmerge": ours_fn, "fusionbench": theirs_fn}, args.repeats, 0, torch.device(where),
                                  keep_outputs=True)
        difference, key = relative_difference(samples["pmerge"].outputs[-1], samples["fusionbench"].outputs[-1])
        ratio = round_ratios(samples["pmerge"].seconds, samples["fusionbench"].seconds)
        results[name] = {"max_relative_difference": difference, "worst_tensor": key,
                         "seconds": {side: smp.seconds for side, smp in samples.items()},
                         "median_ratio_fusionbench_over_pmerge": ratio["median"], "ratio_per_round": ratio}
        print(f"{name}: max |ours - theirs| / max |theirs| = {difference:.2e} ({key})", flush=True)
    import fusion_bench
    payload = {"benchmark": NAME, "created": now_iso(), "machine": machine_info(device),
               "config": {"argv": args.argv, "zoo": str(Path(args.zoo).resolve()), "tasks": zoo.tasks,
                          "fusion_bench": getattr(fusion_bench, "__version__", "0.2.33"), "exclude_keys": exclude},
               "results": results}
    path = write_result(args.out_dir, NAME, device, payload)
    print(markdown_table(["method", "max relative difference", "worst tensor", "FusionBench s / pmerge s (median)"],
                         [[n, f"{r['max_relative_difference']:.2e}", r["worst_tensor"],
                           f"{r['median_ratio_fusionbench_over_pmerge']:.2f}"] for n, r in results.items()]))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
