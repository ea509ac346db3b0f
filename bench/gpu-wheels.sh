#!/usr/bin/env bash
# Fetch, on this machine, the wheels that bench/gpu.sh needs on a GPU machine without network (its
# image has torch, timm, safetensors, numpy, scipy and pillow, but not these: open_clip, pydantic,
# pymoo with its needs for MAP, and the service's HTTP stack for http_bench); they land in .whl/
# (about 20 MB), which the device tool carries.
# Python 3.12, x86-64, the versions pyproject.toml pins.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
for spec in open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 pydantic==2.14.3 pydantic-core==2.50.4 \
            annotated-types==0.8.0 typing-inspection==0.4.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
            pymoo==0.6.2 alive-progress==3.3.0 about-time==4.2.1 graphemeu==0.7.2 autograd==1.9.1 cma==4.5.0 \
            Deprecated==1.3.1 moocore==0.3.2 cffi==2.1.1 pycparser==3.12 platformdirs==4.14.9 \
            fastapi==0.165.0 fastapi-offline==1.7.7 starlette==1.10.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2 \
            typing-extensions==4.16.0 uvicorn==0.54.0 click==8.5.1 h11==0.16.0 httptools==0.9.0 \
            python-multipart==0.0.34 anyio==4.16.0 sniffio==1.3.1 idna==3.20 httpx==0.28.1 httpcore==1.0.9 \
            certifi==2026.10.19.post1 prometheus-client==0.26.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$spec"
done
ls -la .whl && du -sh .whl
