#!/usr/bin/env bash
# Every GPU figure of the project in one command (bench/README.md, "GPU evidence"):
#   1. correctness on CUDA: the service's mixed-preference forward against materialised weights
#      (fp32 to 1e-4 relative, bf16 to 3e-2), ViT-B/32 and ViT-L/14;
#   2. serving speed, bf16: plain tower / mixed preferences / materialise per preference, at
#      batch 1, 8, 64 and 128, ViT-B/32 and ViT-L/14 (target: mixed >= 0.9 x plain at batch >= 64);
#      and the point-set kind at batch 64 with 1, 2, 4, 8 distinct members, warm and cold
#      (target: warm >= 0.85 x plain with up to 4 members);
#   3. the Pareto Merging training step against a plain step, bf16 autocast, ViT-B/32 and ViT-L/14
#      (target: PM / plain <= 1.3);
#   4. MAP's default 8-task budget on random ViT-B/32 towers, 512 validation images per task,
#      wall time by stage (target: under 5 minutes);
#   5. ReACT's preference stage beside PM's training, random ViT-B/32 towers, 8 tasks.
#   (The serving rows of step 2 include the feature-map kind's forward, f/a.)
# JSON lands in bench/results/ (and in $OUT when set, for the device tool); about 5 minutes on an
# H200. On a machine without network, run bench/gpu-wheels.sh here first and carry `.whl`:
#
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
#
# ARCHS, BATCHES, DEVICE override the sizes and the device, for a dry run on a CPU:
#   ARCHS=tiny BATCHES=1,4 DEVICE=cpu bash bench/gpu.sh
# All five steps may take more than one call's 600 s: STEPS picks some (default all), e.g.
#   run(command="STEPS=1,2,3 bash bench/gpu.sh", ...) then run(command="STEPS=4,5 bash bench/gpu.sh", ...)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ARCHS="${ARCHS:-ViT-B-32,ViT-L-14}"
BATCHES="${BATCHES:-1,8,64,128}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-1,2,3,4,5}"
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
if want 1 || want 2; then
echo "== 1/5 correctness: mixed forward vs materialised weights, fp32 and bf16"
"$PY" bench/serve_bench.py --device "$DEVICE" --archs "$ARCHS" --batch-sizes "${BATCHES##*,}" --dtype fp32 --members "" \
    --repeats 2 --warmup 0 --tasks 8
fp32=$(newest serve)
if [ "$DEVICE" = cuda ]; then
    "$PY" bench/serve_bench.py --device "$DEVICE" --archs "$ARCHS" --batch-sizes "$BATCHES" --dtype bf16 --tasks 8
    bf16=$(newest serve)
else
    bf16=$fp32
fi
"$PY" - "$fp32" "$bf16" <<'EOF'
import json, sys
checks = [(sys.argv[1], 1e-4)] + ([(sys.argv[2], 3e-2)] if sys.argv[2] != sys.argv[1] else [])
failed = []
for path, limit in checks:
    d = json.load(open(path))
    for r in d["results"]:
        for b in r["batches"]:
            diff = b["b_vs_c_max_rel_diff"]
            ok = diff <= limit
            print(f"{d['config']['dtype']} {r['arch_name']} batch {b['batch']}: max |mixed - materialised| / max |materialised| "
                  f"= {diff:.2e} ({'ok' if ok else 'OVER'} {limit:g})")
            failed += [] if ok else [path]
sys.exit(1 if failed else 0)
EOF

echo "== 2/5 serving speed, bf16 (above: $(basename "$bf16"))"
fi

if want 3; then
echo "== 3/5 training step, PM vs plain"
for arch in "${arch_list[@]}"; do
    "$PY" bench/train_bench.py --device "$DEVICE" --arch "$arch"
done
fi

if want 4; then
echo "== 4/5 MAP, default 8-task budget"
if [ "$DEVICE" = cuda ]; then
    "$PY" bench/map_speed.py --device "$DEVICE"
else
    "$PY" bench/map_speed.py --device "$DEVICE" --arch "${arch_list[0]}" --tasks 3 --val-images 64 --population 12 --generations 10
fi
fi

if want 5; then
echo "== 5/5 ReACT's preference stage beside PM's training"
if [ "$DEVICE" = cuda ]; then
    "$PY" bench/react_speed.py --device "$DEVICE"
else
    "$PY" bench/react_speed.py --device "$DEVICE" --arch "${arch_list[0]}" --tasks 3 --images 64 --pm-steps 10
fi
fi

echo "== done in $(( $(date +%s) - started )) s"
