#!/usr/bin/env bash
# The peer servers' virtual environments for bench/http_bench.py --peers: .venv-peers/<peer>, each with
# its pinned requirements; torch, open_clip and pmerge's decoder come from pmerge's .venv (a .pth file
# after the peer's own packages, so a peer's fastapi and uvicorn win).
set -euo pipefail
cd "$(dirname "$0")/../.."
main_site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for peer in "$@"; do
  venv=".venv-peers/$peer"
  [ -x "$venv/bin/python" ] || python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q -r "bench/peers/requirements-$peer.txt"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$main_site" > "$site/zz-pmerge-main.pth"
done
