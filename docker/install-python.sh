#!/bin/sh
# Make sure the image has CPython 3.11 (pmerge requires >=3.11,<3.12).
#
#   install-python.sh           interpreter only (runtime stage)
#   install-python.sh --venv    interpreter + venv/ensurepip (build stage)
#
# Uses the base image's python3.11 when it already has one (e.g. a pytorch or
# custom CUDA image), otherwise installs it with apt (Debian bookworm ships
# 3.11.2 as python3.11). Other distributions: pass a BASE_IMAGE that has it.
set -eu

PY="${PYTHON:-python3.11}"
NEED_VENV=0
[ "${1:-}" = "--venv" ] && NEED_VENV=1

have() {
    command -v "$PY" >/dev/null 2>&1 || return 1
    [ "$NEED_VENV" = 0 ] || "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1
}

if ! have; then
    command -v apt-get >/dev/null 2>&1 || {
        echo "install-python.sh: $PY missing and no apt-get; use a BASE_IMAGE with Python 3.11" >&2
        exit 1
    }
    PKGS="$PY ca-certificates"
    [ "$NEED_VENV" = 1 ] && PKGS="$PKGS $PY-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $PKGS
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi

"$PY" - <<'PYEOF'
import sys
assert sys.version_info[:2] == (3, 11), f"pmerge needs Python 3.11, got {sys.version}"
print("python", sys.version.split()[0], "at", sys.executable)
PYEOF
