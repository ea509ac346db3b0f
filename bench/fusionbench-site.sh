#!/usr/bin/env bash
# FusionBench's merging functions, for bench/fusionbench_check.py: fusion-bench 0.2.33 and what its
# modules import on the way, each --no-deps (its full requirements would replace this machine's
# torch), into .cache/fusionbench-site (about 450 MB). Then:
#   PYTHONPATH=.cache/fusionbench-site .venv/bin/python bench/fusionbench_check.py --zoo runs/demo/zoo
set -euo pipefail
cd "$(dirname "$0")/.."
site=.cache/fusionbench-site
rm -rf "$site" && mkdir -p "$site"
.venv/bin/pip install -q --no-deps --target "$site" antlr4-python3-runtime==4.9.3  # an sdist: built here
.venv/bin/pip install -q --no-deps --only-binary=:all: --target "$site" fusion-bench==0.2.33 accelerate==1.15.0 \
    bidict==0.24.1 datasets==5.2.0 dill==0.4.1 hydra-core==1.3.8 lightning==2.6.6 lightning-utilities==0.15.3 \
    multiprocess==0.70.19 omegaconf==2.4.0 pandas==3.1.1 peft==0.21.2 pyarrow==26.0.1 tokenizers==0.23.3 \
    torchmetrics==1.9.0 transformers==5.24.0 xxhash==4.1.0
du -sh "$site"
