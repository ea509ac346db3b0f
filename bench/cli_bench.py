"""How fast `pmerge` starts: each command as a user runs it (the console script, a new process),
against `python -c "import torch, open_clip"` measured beside it, interleaved.

Per run: wall seconds and the process's peak resident memory (`os.wait4`'s rusage of that one
child). Variants: `pmerge --help`, `pmerge classify --help`, `pmerge fetch --help`, `pmerge store ls`
on a store of two families, and the reference. Targets: each command at most a third of the
reference's time (median of the per-round ratios) and at most 250 MB.

    .venv/bin/python bench/cli_bench.py [--repeats 9]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (add_common_args, machine_info, markdown_table, now_iso, percentile, round_ratios,  # noqa: E402
                          run_benchmark, spread_text, temporary_store, write_result)

TIME_RATIO = 1 / 3
PEAK_MB = 250
REFERENCE = "import torch, open_clip"


def pmerge() -> str:
    """The console script of the Python running this benchmark."""
    script = Path(sys.executable).with_name("pmerge")
    if not script.exists():
        raise SystemExit(f"no {script}: install pmerge into this environment first (make test does)")
    return str(script)


# Runs one command and reports its seconds, peak RSS (KiB) and exit code. A small process of its own:
# a child forked from this benchmark (which holds torch) would count the benchmark's pages as its own.
LAUNCHER = ("import os, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "print(time.perf_counter() - t, usage.ru_maxrss, os.waitstatus_to_exitcode(status))")


def run_once(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process running `argv`."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], capture_output=True, text=True, check=True).stdout
    seconds, kib, code = out.split()
    if code != "0":
        raise SystemExit(f"{' '.join(argv)} exited {code}")
    return float(seconds), int(kib) / 1024


def make_store(root: Path) -> Path:
    """Two families of the micro tower (no torch needed to list them, torch to write them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "service"))
    from svc_helpers import make_family, make_point_set_family
    make_family(root)
    make_point_set_family(root)
    return root


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--repeats", type=int, default=9)
    run_benchmark(p, argv, run)


def run(args: argparse.Namespace, device) -> None:
    with temporary_store("pmerge-cli-bench-") as store:
        make_store(store)
        variants = {
            "reference": [sys.executable, "-c", REFERENCE],
            "pmerge --help": [pmerge(), "--help"],
            "pmerge classify --help": [pmerge(), "classify", "--help"],
            "pmerge fetch --help": [pmerge(), "fetch", "--help"],
            "pmerge store ls": [pmerge(), "store", "ls", "--store", str(store)],
        }
        names = list(variants)
        seconds: dict[str, list[float]] = {n: [] for n in names}
        peaks: dict[str, list[float]] = {n: [] for n in names}
        for n in names:  # one untimed round: the page cache holds the files afterwards
            run_once(variants[n])
        for r in range(args.repeats):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                s, mb = run_once(variants[n])
                seconds[n].append(s)
                peaks[n].append(mb)
    results = {}
    for n in names:
        results[n] = {"argv": variants[n][1:], "seconds": seconds[n], "peak_mb": peaks[n],
                      "p50_s": percentile(seconds[n], 50), "max_peak_mb": max(peaks[n]),
                      # per round: this command's seconds over the reference's, measured side by side
                      "time_over_reference": round_ratios(seconds["reference"], seconds[n])}
    met = {n: results[n]["time_over_reference"]["median"] <= TIME_RATIO and results[n]["max_peak_mb"] <= PEAK_MB
           for n in names if n != "reference"}
    rows = [(n, results[n]["p50_s"], results[n]["max_peak_mb"],
             "" if n == "reference" else spread_text(results[n]["time_over_reference"]),
             "" if n == "reference" else ("met" if met[n] else "NOT met")) for n in names]
    print(markdown_table(["command", "p50 s", "peak MB", "time / reference [IQR]", "target"], rows))
    print(f"reference: python -c {REFERENCE!r}; target: time <= {TIME_RATIO:.3f} x reference and peak <= {PEAK_MB} MB")
    path = write_result(args.out_dir, "cli", device, {
        "benchmark": "cli", "created": now_iso(), "machine": machine_info(device),
        "config": {"argv": args.argv, "repeats": args.repeats, "reference": REFERENCE,
                   "interleaving": "every variant once per round, the order rotated every round"},
        "results": results, "target": {"time_over_reference_at_most": TIME_RATIO, "peak_mb_at_most": PEAK_MB,
                                       "met": met, "all_met": all(met.values())}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
