#!/usr/bin/env bash
# Build a minimal Debian bookworm base image locally with debootstrap and
# `docker import` it, for hosts that cannot pull from a registry.
#
#   sudo docker/make-base-image.sh [TAG] [MIRROR]
#
# TAG     default: pmerge-base:bookworm   (the Dockerfile's default BASE_IMAGE)
# MIRROR  default: the deb.debian.org URL from this host's apt sources,
#         else http://deb.debian.org/debian
#
# Needs root, debootstrap and a running docker engine.
# On a host that CAN pull images you do not need this: pass
#   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04   (or debian:bookworm-slim)
# to `docker build` / set BASE_IMAGE for docker compose instead.
set -euo pipefail

TAG="${1:-pmerge-base:bookworm}"
MIRROR="${2:-}"
SUITE="${SUITE:-bookworm}"

if [[ -z "$MIRROR" ]]; then
    MIRROR="$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
              | grep -v security | head -n1 | tr -d ' ' || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

for tool in debootstrap docker tar; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install -y debootstrap docker.io)" >&2; exit 1; }
done
[[ "$(id -u)" == 0 ]] || { echo "error: debootstrap needs root" >&2; exit 1; }

ROOTFS="$(mktemp -d /tmp/pmerge-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

echo ">> debootstrap --variant=minbase $SUITE from $MIRROR"
# ca-certificates so pip can talk to PyPI over TLS inside the image.
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR"

# Same apt sources layout as the official debian images (main + updates + security).
cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
# Trim the image like debian:*-slim does.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/tmp/*

echo ">> docker import -> $TAG"
tar --numeric-owner -C "$ROOTFS" -c . \
  | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["bash"]' \
      - "$TAG"
docker image ls "$TAG"
