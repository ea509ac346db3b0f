"""Helpers shared by the benchmarks: machine record, devices, timing, peak memory, JSON, tables.

Timing: every measured call is bracketed by a device synchronisation (CUDA) and timed with
`time.perf_counter`. Several variants are measured *interleaved* (the order rotates every
repeat), so slow drifts and the neighbours' load on a shared machine hit all of them alike.

Peak memory of one call (`PeakMemory`):
  * CUDA: `torch.cuda.reset_peak_memory_stats` before, `torch.cuda.max_memory_allocated` after
    (bytes held by PyTorch's caching allocator; the increase is peak minus allocated before).
  * CPU: the process's peak resident set (`VmHWM` of /proc/self/status), reset before the call by
    writing `5` to /proc/self/clear_refs (Linux >= 4.0); the increase is VmHWM after minus VmRSS
    before. tracemalloc does not see torch's allocations; `getrusage(ru_maxrss)` cannot be reset,
    so it is only the fallback where clear_refs is not writable (then `method` says so).
    Memory that the allocator kept from an earlier call counts as "before", so the CPU increase
    is a lower bound of what the call would need on its own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import torch

from models_store.atomic import write_text
from models_store.device import pick_device

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


# --- machine and device ---------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """models_store.device.pick_device, with a bad name a clean exit."""
    try:
        return pick_device(name)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from None


def device_kind(device: torch.device) -> str:
    """`cpu`, or `cuda-<gpu name>` slugified (e.g. cuda-nvidia-h100-80gb-hbm3): part of result names."""
    if device.type != "cuda":
        return device.type
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git() -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": head or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "niceness": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": None,
        "git": _git(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"cuda_device": torch.cuda.get_device_name(device), "cuda_version": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(), "gpu_memory_bytes": props.total_memory}
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- peak memory ------------------------------------------------------------------------------

def _proc_status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _clear_refs_works() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated after reset_peak_memory_stats (increase: minus memory_allocated before)"
    if _clear_refs_works():
        return "peak RSS: VmHWM of /proc/self/status reset via /proc/self/clear_refs=5 (increase: minus VmRSS before)"
    return "peak RSS: getrusage ru_maxrss (NOT resettable: lifetime peak of the process; increase unreliable)"


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak` and `m.increase` (bytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = self.peak = self.increase = 0
        self._clear_refs = device.type != "cuda" and _clear_refs_works()

    def _current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        try:
            return _proc_status_kib("VmRSS") * 1024
        except (OSError, KeyError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._clear_refs:
            Path("/proc/self/clear_refs").write_text("5")
        self.before = self._current()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._clear_refs:
            self.peak = _proc_status_kib("VmHWM") * 1024
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.increase = max(0, self.peak - self.before)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and repeats counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        s = t.untyped_storage()
        seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


def optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]


# --- timing -------------------------------------------------------------------------------------

@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    increase_bytes: list[int] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)


def run_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                    memory: bool = False, keep_outputs: bool = False) -> dict[str, Samples]:
    """Call every fn `warmup` times (untimed) then `repeats` times (timed), rotating the order
    every round so that no variant always runs first or after the same neighbour."""
    names = list(fns)
    out = {n: Samples() for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r < warmup:
                fns[name]()
                sync(device)
                continue
            s = out[name]
            probe = PeakMemory(device) if memory else None
            if probe is not None:
                probe.__enter__()
            sync(device)
            t0 = time.perf_counter()
            result = fns[name]()
            sync(device)
            s.seconds.append(time.perf_counter() - t0)
            if probe is not None:
                probe.__exit__(None, None, None)
                s.peak_bytes.append(probe.peak)
                s.increase_bytes.append(probe.increase)
            if keep_outputs:
                s.outputs.append(result)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    n = len(seconds)
    mean = sum(seconds) / n if n else math.nan
    std = math.sqrt(sum((s - mean) ** 2 for s in seconds) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean_s": mean, "p50_s": percentile(seconds, 50), "p99_s": percentile(seconds, 99),
            "min_s": min(seconds) if n else math.nan, "max_s": max(seconds) if n else math.nan, "std_s": std}


def round_ratios(faster: Sequence[float], slower: Sequence[float]) -> dict[str, Any]:
    """Throughput ratio x/y per interleaved round (y's seconds over x's, measured side by side), and
    its spread: median, interquartile range and extremes over the rounds."""
    ratios = [y / x for x, y in zip(faster, slower, strict=True)]
    return {"rounds": ratios, "median": percentile(ratios, 50), "q25": percentile(ratios, 25),
            "q75": percentile(ratios, 75), "min": min(ratios), "max": max(ratios)}


def spread_text(r: dict[str, Any]) -> str:
    """`0.95 [0.91-0.99]`: the median ratio and its interquartile range over the rounds."""
    return f"{r['median']:.2f} [{r['q25']:.2f}-{r['q75']:.2f}]"


# --- options, results, tables ---------------------------------------------------------------------

def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON result goes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads; 0: torch's default (one per core). Unset: torch's "
                             "default, except train_bench/serve_bench on the CPU: 1 (bench/README.md, "
                             "'Threads on a shared machine')")


@contextlib.contextmanager
def torch_threads(threads: Optional[int], device: torch.device) -> Iterator[int]:
    """Set torch's intra-op threads for the run (None: 1 on the CPU, unchanged with CUDA; 0: unchanged)
    and restore the previous value afterwards (main() may be called from a test)."""
    previous = torch.get_num_threads()
    if threads is None:
        threads = 1 if device.type == "cpu" else 0
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def run_benchmark(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                  run: Callable[[argparse.Namespace, torch.device], T]) -> T:
    """Every benchmark's main(): parse argv (recorded as args.argv for the result's config), pick
    the device from --device, run under --threads."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    with torch_threads(args.threads, device):
        return run(args, device)


@contextlib.contextmanager
def temporary_store(prefix: str) -> Iterator[Path]:
    """A scratch store for the families a benchmark trains, removed afterwards."""
    import shutil
    import tempfile
    store = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield store
    finally:
        shutil.rmtree(store, ignore_errors=True)


def result_path(out_dir: Path, name: str, device: torch.device) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(out_dir) / f"{name}-{device_kind(device)}-{stamp}.json"


def write_result(out_dir: Path, name: str, device: torch.device, payload: dict[str, Any]) -> Path:
    """Write `payload` as JSON, atomically, to OUT_DIR/<name>-<device kind>-<UTC timestamp>.json."""
    path = result_path(out_dir, name, device)
    write_text(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return path


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "n/a"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n: float) -> float:
    return n / (1 << 20)


# a child's ru_maxrss counts the memory it had between fork and exec, a copy of its parent's: a
# benchmark holding a zoo would see its own size in every child. A small launcher forks instead.
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "print(usage.ru_maxrss, file=sys.stderr)\n"
             "sys.exit(os.waitstatus_to_exitcode(status))")


def run_with_peak(argv: list[str]) -> tuple[str, int, float]:
    """(stdout, peak RSS bytes, seconds) of a command, its peak measured by a small launcher's wait4."""
    import subprocess
    import time
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout, int(done.stderr.strip().splitlines()[-1]) * 1024, seconds
