"""The benchmarks run end to end on the micro tower and write the JSON they promise (seconds)."""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import serve_bench, train_bench  # noqa: E402


def test_train_bench_micro(tmp_path):
    threads = torch.get_num_threads()
    out = train_bench.main(["--arch", "micro", "--device", "cpu", "--tasks", "2", "--images-per-task", "2",
                            "--steps", "2", "--warmup", "1", "--rank", "2", "--threads", "1",
                            "--out-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    assert Path(out["path"]).parent == tmp_path and Path(out["path"]).name.startswith("train-cpu-")
    assert {"hostname", "platform", "cpu_model", "cpu_count", "torch", "cuda_device"} <= set(data["machine"])
    assert data["config"]["tasks"] == 2 and data["config"]["images_per_step"] == 4
    assert data["config"]["threads"] == 1 and torch.get_num_threads() == threads  # restored for later tests
    for name in ("pm", "plain"):
        r = data["results"][name]
        assert len(r["seconds"]) == 2 and r["images_per_s_p50"] > 0 and r["losses_finite"]
        assert r["max_peak_bytes"] > 0 and r["kept_bytes"] > 0
    assert data["ratio"]["pm_over_plain_p50"] > 0 and data["target"]["applies"] is False


def test_serve_bench_micro(tmp_path):
    out = serve_bench.main(["--archs", "micro", "--device", "cpu", "--batch-sizes", "1,3", "--repeats", "2",
                            "--tasks", "3", "--rank", "2", "--threads", "1", "--out-dir", str(tmp_path),
                            "--time-materialise", "--cold", "1,2,4,8"])
    data = json.loads(Path(out["path"]).read_text())
    assert Path(out["path"]).name.startswith("serve-cpu-") and data["config"]["dtype"] == "fp32"
    assert "machine" in data and data["config"]["batch_sizes"] == {"micro": [1, 3]}
    batches = data["results"][0]["batches"]
    assert [b["batch"] for b in batches] == [1, 3]
    for b in batches:
        assert b["distinct_preferences"] == b["batch"]
        assert b["b_vs_c_max_rel_diff"] < 1e-4  # the mixed forward equals per-preference weights
        for v in "abcf":
            assert len(b[v]["seconds"]) == 2 and b[v]["images_per_s"] > 0 and b[v]["p99_ms"] >= b[v]["p50_ms"]
        assert b["b_over_a"] > 0 and b["c_over_a"] > 0 and b["f_over_a"] > 0
    ps = data["results"][0]["point_set"]  # the point-set rows: 1, 2, 4, 8 members, warm and cold
    assert ps["batch"] == 64 and ps["misses_per_cold_call"] == {"1": 1.0, "2": 2.0, "4": 4.0, "8": 8.0}
    assert all(ps[f"{v}{d}_over_a"] > 0 for v in "wc" for d in (1, 2, 4, 8))


def test_map_speed_tiny(tmp_path):
    from bench import map_speed
    out = map_speed.main(["--device", "cpu", "--arch", "tiny", "--tasks", "2", "--val-images", "16", "--population",
                          "8", "--generations", "5", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    assert Path(out["path"]).name.startswith("map-speed-cpu-") and "machine" in data
    assert data["results"]["evaluations"]["design"] == 12 and data["results"]["seconds"] > 0
    assert set(data["results"]["seconds_by_stage"]) == {"merge", "evaluate", "fit", "nsga3"}
    assert data["target"]["applies"] is False
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("map-speed-") and p.is_dir()] == []  # cleaned


def test_react_speed_tiny(tmp_path):
    from bench import react_speed
    out = react_speed.main(["--device", "cpu", "--arch", "tiny", "--tasks", "2", "--images", "16", "--pm-steps", "2",
                            "--out-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    assert Path(out["path"]).name.startswith("react-speed-cpu-") and data["config"]["pm_steps"] == 2
    assert data["results"]["react"]["metrics"]["preference_stage_seconds"] > 0
    assert data["results"]["pm"]["metrics"]["steps"] == 2 and data["results"]["pm_over_react"] > 0


def test_http_bench_micro(tmp_path):
    from bench import http_bench
    out = http_bench.main(["--arch", "micro", "--tasks", "2", "--images", "6", "--repeats", "2", "--concurrency", "3",
                           "--max-batch", "4", "--front-ends", "0,1", "--out-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    assert Path(out["path"]).name.startswith("http-cpu-") and "machine" in data
    variants = data["results"]["256"]["variants"]
    for name in ("decode", "engine", "bare-1", "bare-8", "pmerge-f0-1", "pmerge-f0-8", "pmerge-f1-1", "pmerge-f1-8"):
        assert len(variants[name]["seconds"]) == 2 and variants[name]["images_per_s"] > 0, name
        # the kernel counts CPU time in 10 ms ticks: a round this small may cost less than one
        assert variants[name]["cpu_ms_per_image_p50"] >= 0, name
    assert sum(variants[name]["cpu_ms_per_image_p50"] for name in variants if name.startswith("pmerge")) > 0
    for name in ("pmerge-f0-1", "pmerge-f1-8"):  # the server's own split: it decoded and forwarded every image
        split = variants[name]["server_ms_per_image"]
        assert split["decode"] > 0 and split["forward"] > 0 and "server_ms_per_request_rest" in variants[name]
    ratios = data["results"]["256"]["ratios"]
    assert all(len(r["rounds"]) == 2 and r["median"] > 0 for r in ratios.values())
    assert {c["variant"] for c in data["target"]["checks"]} == {"pmerge-f0-1", "pmerge-f0-8", "pmerge-f1-1",
                                                               "pmerge-f1-8"}
