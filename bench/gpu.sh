#!/usr/bin/env bash
# Every GPU figure of the project in one command (bench/README.md, "GPU evidence"):
#   1. correctness on CUDA: the service's mixed-preference forward against materialised weights,
#      fp32 with TF32 off, to 1e-4 relative, ViT-B/32 and ViT-L/14;
#   2. serving speed, bf16, eager and with CUDA graphs: plain tower / mixed preferences, at batch
#      1, 8, 64 and 128, ViT-B/32 and ViT-L/14 (target: mixed >= 0.95 x plain at batch >= 64); the
#      point-set kind at batch 64 with 1, 2, 4, 8 distinct members, warm and cold (target: warm
#      >= 0.85 x plain with 4 members); the feature-map kind's forward (f/a);
#   3. the request path: `pmerge serve` (in one process, and with 8 front ends) against the engine
#      alone, ViT-B/32 bf16, 256 and 640 px JPEGs decoded on the device, 8 images per request
#      (target: http >= 0.8 x engine);
#   4. the demo test set classified after host and device (nvjpeg) JPEG decoding (target: within
#      0.1 point); needs runs/demo (`make demo`, carried), else skipped;
#   5. the Pareto Merging training step against a plain step, bf16 autocast, ViT-B/32 and ViT-L/14
#      (target: PM / plain <= 1.3);
#   6. MAP's default 8-task budget on random ViT-B/32 towers, 512 validation images per task,
#      wall time by stage (target: under 5 minutes);
#   7. ReACT's preference stage beside PM's training, random ViT-B/32 towers, 8 tasks.
# JSON lands in bench/results/ (and in $OUT when set, for the device tool). On a machine without
# network, run bench/gpu-wheels.sh here first and carry `.whl` (and runs/demo for step 4):
#
#   run(command="STEPS=1,2,3,4 REPEATS=10 bash bench/gpu.sh", carry=[".whl", "runs/demo"], timeout_s=540)
#
# ARCHS, BATCHES, DEVICE override the sizes and the device, for a dry run on a CPU:
#   ARCHS=tiny BATCHES=1,4 DEVICE=cpu bash bench/gpu.sh
# All steps may take more than one call's 600 s: STEPS picks some (default all), e.g.
#   run(command="STEPS=1,2,3,4 bash bench/gpu.sh", ...) then run(command="STEPS=5,6,7 bash bench/gpu.sh", ...)
# REPEATS shortens step 2 (serve_bench's timed batches; its default is 30 on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ARCHS="${ARCHS:-ViT-B-32,ViT-L-14}"
BATCHES="${BATCHES:-1,8,64,128}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-1,2,3,4,5,6,7}"
REPEATS="${REPEATS:-}"
want() { [[ ",$STEPS," == *",$1,"* ]]; }
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if ! "$PY" -c "import open_clip, pydantic_settings" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pmerge-site .whl/*.whl
    export PYTHONPATH="/tmp/pmerge-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
fi
results=bench/results
started=$(date +%s)
newest() { ls -t "$results"/"$1"-*.json | head -n 1; }
copy_out() {  # on every exit: what was measured comes back even when a later step fails or runs out of time
    if [ -n "${OUT:-}" ]; then
        find "$results" -newermt "@$started" -name '*.json' -exec cp {} "$OUT"/ \;
        ls -la "$OUT"
    fi
}
trap copy_out EXIT
trap "exit 143" TERM INT

IFS=, read -ra arch_list <<< "$ARCHS"
if want 1; then
echo "== 1/7 correctness: mixed forward vs materialised weights, fp32, TF32 off"
"$PY" bench/serve_bench.py --device "$DEVICE" --archs "$ARCHS" --batch-sizes "${BATCHES##*,}" --dtype fp32 --members "" \
    --cold "" --repeats 2 --warmup 0 --tasks 8 --no-graphs
fp32=$(newest serve)
"$PY" - "$fp32" 1e-4 <<'EOF'
import json, sys
d, limit = json.load(open(sys.argv[1])), float(sys.argv[2])
failed = False
for r in d["results"]:
    for b in r["batches"]:
        diff = b["b_vs_c_max_rel_diff"]
        failed |= diff > limit
        print(f"{d['config']['dtype']} {r['arch_name']} batch {b['batch']}: max |mixed - materialised| / max |materialised| "
              f"= {diff:.2e} ({'ok' if diff <= limit else 'OVER'} {limit:g})")
sys.exit(1 if failed else 0)
EOF
fi

if want 2; then
echo "== 2/7 serving speed, eager and CUDA graphs (bf16 on CUDA)"
graphs=--no-graphs
[ "$DEVICE" = cuda ] && graphs=--graphs
"$PY" bench/serve_bench.py --device "$DEVICE" --archs "$ARCHS" --batch-sizes "$BATCHES" --tasks 8 $graphs \
    ${REPEATS:+--repeats "$REPEATS"}
fi

if want 3; then
echo "== 3/7 the request path: pmerge serve against the engine alone"
if [ "$DEVICE" = cuda ]; then
    "$PY" bench/http_bench.py --device cuda --arch "${arch_list[0]}" --image-sizes 256,640 --per-request 8 \
        --front-ends 0,8 --images 1024 --concurrency 64 --max-batch 128 --repeats 3
else
    "$PY" bench/http_bench.py --device "$DEVICE" --arch "${arch_list[0]}" --per-request 8 --front-ends 0,1 --images 64 \
        --repeats 2
fi
fi

if want 4; then
echo "== 4/7 host and device JPEG decoding on the demo test set"
if [ -d runs/demo/families ]; then
    "$PY" bench/decode_accuracy.py --device "$DEVICE" --store runs/demo/families
else
    echo "skipped: no runs/demo/families (make demo, then carry runs/demo)"
fi
fi

if want 5; then
echo "== 5/7 training step, PM vs plain"
for arch in "${arch_list[@]}"; do
    "$PY" bench/train_bench.py --device "$DEVICE" --arch "$arch"
done
fi

if want 6; then
echo "== 6/7 MAP, default 8-task budget"
if [ "$DEVICE" = cuda ]; then
    "$PY" bench/map_speed.py --device "$DEVICE"
else
    "$PY" bench/map_speed.py --device "$DEVICE" --arch "${arch_list[0]}" --tasks 3 --val-images 64 --population 12 --generations 10
fi
fi

if want 7; then
echo "== 7/7 ReACT's preference stage beside PM's training"
if [ "$DEVICE" = cuda ]; then
    "$PY" bench/react_speed.py --device "$DEVICE"
else
    "$PY" bench/react_speed.py --device "$DEVICE" --arch "${arch_list[0]}" --tasks 3 --images 64 --pm-steps 10
fi
fi

echo "== done in $(( $(date +%s) - started )) s"
