# pmerge: inference service (and trainer) for merged open_clip vision towers.
#
#   docker build -t pmerge:latest .
#   docker run --gpus all -p 8000:8000 -v pmerge-store:/store pmerge:latest
#
# Build arguments
#   BASE_IMAGE   the image everything sits on. Default: pmerge-base:bookworm, a plain
#                Debian bookworm made locally by docker/make-base-image.sh (for hosts
#                that cannot pull). With a registry, any Debian/Ubuntu image whose
#                python3.11 is available works, e.g. debian:bookworm-slim, or a CUDA
#                image that ships Python 3.11. A CUDA base image is NOT required for
#                the GPU: PyPI's torch wheel carries its own CUDA runtime (nvidia-*
#                wheels); the host needs only the NVIDIA driver + container toolkit.
#   TORCH_INDEX  empty (default): torch/torchvision come from PyPI = the CUDA build
#                (several GB). Set to https://download.pytorch.org/whl/cpu for a much
#                smaller CPU-only image.
#   EXTRAS       pmerge's optional extras to install too, comma-separated: `ray` for
#                `pmerge serve --ray` and KubeRay (ray/rayservice.yaml), `hf` for zero-shot
#                heads in `pmerge import --format hf`. Default: none.
#   PIP_INDEX_URL  the package index (default: PyPI); set it to use a mirror.
#   EXTRA_CA_CERT  PEM text of an extra CA to trust while pip downloads (a TLS-inspecting
#                proxy): --build-arg EXTRA_CA_CERT="$(cat proxy-ca.pem)". Used by the
#                build stages only; it is not in the final image.
#
# Plain `docker build` (legacy builder) works: no BuildKit-only syntax is used.

ARG BASE_IMAGE=pmerge-base:bookworm

# ---- python: the base image + CPython 3.11 + the unprivileged user ---------------------
FROM ${BASE_IMAGE} AS python
COPY docker/install-python.sh /usr/local/sbin/install-python.sh
RUN /usr/local/sbin/install-python.sh \
 && groupadd --system --gid 10001 pmerge \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/pmerge \
        --shell /usr/sbin/nologin pmerge
ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- deps: a virtualenv with the pinned dependencies (the big, rarely-changing layer) ---
FROM python AS deps
ARG TORCH_INDEX=
ARG EXTRAS=
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG EXTRA_CA_CERT=
ENV PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/tmp/build/ca-bundle.crt
RUN /usr/local/sbin/install-python.sh --venv \
 && mkdir -p /tmp/build \
 && { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_CERT"; } > "$PIP_CERT" \
 && python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade "pip>=24"
ENV PATH=/opt/venv/bin:$PATH
# Only pyproject.toml here: code changes do not invalidate this layer.
COPY pyproject.toml docker/requirements-from-pyproject.py /tmp/build/
RUN python /tmp/build/requirements-from-pyproject.py /tmp/build/pyproject.toml "$EXTRAS" > /tmp/build/requirements.txt \
 && if [ -n "$TORCH_INDEX" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX" --extra-index-url "$PIP_INDEX_URL" \
            $(grep -E '^(torch|torchvision)==' /tmp/build/requirements.txt); \
    fi \
 && pip install --no-cache-dir -r /tmp/build/requirements.txt

# ---- wheel: build pmerge itself ---------------------------------------------------------
FROM deps AS wheel
ARG PIP_INDEX_URL=https://pypi.org/simple
WORKDIR /src
# README.md is the project's `readme` (the glob tolerates a checkout that lacks it).
COPY pyproject.toml README.m[d] ./
COPY models_store/ models_store/
COPY trainer/ trainer/
COPY service/ service/
RUN test -f README.md || echo "pmerge" > README.md \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime -----------------------------------------------------------------------------
FROM python AS runtime
# Same base + same interpreter path as `deps`, so the venv can be copied as is.
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && pip check \
 && pmerge --help >/dev/null
COPY docker/entrypoint-trainer.sh /usr/local/bin/pmerge-trainer

# The store: one volume, the zoo in /store/zoo, the served families in /store/families.
RUN mkdir -p /store/zoo /store/families /app \
 && chown -R pmerge:pmerge /store /app
ENV PMERGE_STORE=/store/families \
    PMERGE_ZOO=/store/zoo \
    HOME=/home/pmerge \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/store"]
WORKDIR /app
USER 10001:10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["pmerge", "serve", "--host", "0.0.0.0", "--port", "8000"]
