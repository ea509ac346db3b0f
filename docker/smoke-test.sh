#!/usr/bin/env bash
# End-to-end check of the compose stack: build, trainer fills the store, the service
# becomes healthy and answers /healthz, /readyz, /family and POST /classify; then tear down.
# Exits non-zero on the first failure. Runs in its own compose project with its own
# volume (removed at the end unless KEEP=1), so it does not touch a real deployment.
#
#   docker/smoke-test.sh                       # CPU
#   GPU=1 docker/smoke-test.sh                 # + docker-compose.gpu.yml
#
# Knobs (environment):
#   PROJECT=pmerge-smoke  PMERGE_PORT=18000  GPU=0  KEEP=0  BUILD=1
#   TRAIN_TIMEOUT=3600 (s, trainer)  READY_TIMEOUT=300 (s, service healthy + ready)
#   CLASSIFY_FIELD=image   multipart field that carries the PNG
#   CLASSIFY_FORM=""       extra curl args for /classify, e.g. '-F preference={"digits":1}'
#   PMERGE_API_KEY         if set, sent as "Authorization: Bearer" and "X-API-Key"
#   PMERGE_ZOO_ARGS / PMERGE_TRAIN_ARGS  passed to the trainer (e.g. fewer steps)
set -euo pipefail

cd "$(dirname "$0")/.."

PROJECT="${PROJECT:-pmerge-smoke}"
export PMERGE_PORT="${PMERGE_PORT:-18000}"
TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-3600}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
CLASSIFY_FIELD="${CLASSIFY_FIELD:-image}"
BASE="http://127.0.0.1:${PMERGE_PORT}"

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    echo "smoke: neither 'docker compose' nor 'docker-compose' found" >&2; exit 2
fi
COMPOSE+=(-p "$PROJECT" -f docker-compose.yml)
[[ "${GPU:-0}" == 1 ]] && COMPOSE+=(-f docker-compose.gpu.yml)

AUTH=()
if [[ -n "${PMERGE_API_KEY:-}" ]]; then
    AUTH=(-H "Authorization: Bearer ${PMERGE_API_KEY}" -H "X-API-Key: ${PMERGE_API_KEY}")
fi

WORK="$(mktemp -d)"
cleanup() {
    rc=$?
    if [[ $rc != 0 ]]; then
        echo "smoke: FAILED (rc=$rc); last logs:" >&2
        "${COMPOSE[@]}" logs --tail=60 >&2 || true
    fi
    if [[ "${KEEP:-0}" != 1 ]]; then
        "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

step() { echo; echo "smoke: == $* =="; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
cid() { "${COMPOSE[@]}" ps -a -q "$1" | head -n1; }

"${COMPOSE[@]}" config -q || fail "compose config invalid"

if [[ "${BUILD:-1}" == 1 ]]; then
    step "build"
    "${COMPOSE[@]}" build
fi

step "trainer"
"${COMPOSE[@]}" up -d --no-build trainer
T="$(cid trainer)"; [[ -n "$T" ]] || fail "no trainer container"
docker wait "$T" >"$WORK/trainer.rc" &
waiter=$!
for ((i = 0; i < TRAIN_TIMEOUT; i += 5)); do
    kill -0 "$waiter" 2>/dev/null || break
    sleep 5
done
kill -0 "$waiter" 2>/dev/null && { kill "$waiter"; fail "trainer still running after ${TRAIN_TIMEOUT}s"; }
wait "$waiter" || true
trc="$(docker inspect -f '{{.State.ExitCode}}' "$T")"
"${COMPOSE[@]}" logs --tail=20 trainer
[[ "$trc" == 0 ]] || fail "trainer exited $trc"

step "service"
"${COMPOSE[@]}" up -d --no-build service
S="$(cid service)"; [[ -n "$S" ]] || fail "no service container"
[[ "$(docker inspect -f '{{.Config.User}}' "$S")" != "" ]] || fail "service runs without a USER"
uid="$(docker exec "$S" id -u)"; [[ "$uid" != 0 ]] || fail "service runs as root"
health=""
for ((i = 0; i < READY_TIMEOUT; i += 5)); do
    health="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$S")"
    state="$(docker inspect -f '{{.State.Status}}' "$S")"
    [[ "$health" == healthy ]] && break
    [[ "$state" == running || "$state" == created ]] || fail "service container is $state"
    sleep 5
done
[[ "$health" == healthy ]] || fail "service not healthy after ${READY_TIMEOUT}s (health=$health)"
echo "smoke: service is healthy (uid $uid)"

get() {  # get PATH EXPECTED_STATUS
    code="$(curl -sS -o "$WORK/body" -w '%{http_code}' "${AUTH[@]}" "$BASE$1")" || fail "GET $1: curl failed"
    echo "GET $1 -> $code: $(head -c 400 "$WORK/body")"
    [[ "$code" == "$2" ]] || fail "GET $1 returned $code, want $2"
}

step "endpoints"
get /healthz 200
ready=""
for ((i = 0; i < READY_TIMEOUT; i += 5)); do
    ready="$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" "$BASE/readyz" || true)"
    [[ "$ready" == 200 ]] && break
    sleep 5
done
get /readyz 200
get /family 200
get /docs 200
grep -q '/docs-static/swagger-ui-bundle.js' "$WORK/body" || fail "/docs does not load its script from the image"
get /docs-static/swagger-ui-bundle.js 200

# A PNG made inside the image (it has Pillow): a 64x64 gradient.
docker exec "$S" python -c "
import io, sys
from PIL import Image
im = Image.new('RGB', (64, 64))
im.putdata([(x * 4, y * 4, 128) for y in range(64) for x in range(64)])
b = io.BytesIO(); im.save(b, format='PNG'); sys.stdout.buffer.write(b.getvalue())
" >"$WORK/probe.png"
[[ -s "$WORK/probe.png" ]] || fail "could not make a PNG"

# shellcheck disable=SC2086
code="$(curl -sS -o "$WORK/body" -w '%{http_code}' "${AUTH[@]}" \
        -F "${CLASSIFY_FIELD}=@$WORK/probe.png;type=image/png" ${CLASSIFY_FORM:-} "$BASE/classify")" \
    || fail "POST /classify: curl failed"
echo "POST /classify -> $code: $(head -c 600 "$WORK/body")"
[[ "$code" == 200 ]] || fail "POST /classify returned $code"

step "restart keeps the family (trainer is a no-op the second time)"
"${COMPOSE[@]}" up -d --no-build trainer
T="$(cid trainer)"
[[ "$(docker wait "$T")" == 0 ]] || fail "second trainer run failed"
# captured first: under pipefail, `logs | grep -q` fails whenever grep exits before logs is done writing
trainer_log="$("${COMPOSE[@]}" logs --tail=5 trainer)"
grep -q "already holds a family" <<<"$trainer_log" || fail "second trainer run retrained"

step "docker stop drains: a request in flight answers, then the service exits 0"
# noise compresses badly: a ~120 kB PNG, sent at 20 kB/s, is still arriving when the stop comes
docker exec "$S" python -c "
import io, os, sys
from PIL import Image
b = io.BytesIO(); Image.frombytes('RGB', (200, 200), os.urandom(120000)).save(b, format='PNG')
sys.stdout.buffer.write(b.getvalue())
" >"$WORK/slow.png"
curl -sS -o "$WORK/slow-body" -w '%{http_code}' --limit-rate 20k "${AUTH[@]}" \
     -F "files=@$WORK/slow.png;type=image/png" "$BASE/classify" >"$WORK/slow-code" &
slow=$!
sleep 2
"${COMPOSE[@]}" stop service
wait "$slow" || fail "the request in flight at docker stop failed: $(cat "$WORK/slow-code" 2>/dev/null)"
[[ "$(cat "$WORK/slow-code")" == 200 ]] || fail "the request in flight at docker stop got $(cat "$WORK/slow-code")"
[[ "$(docker inspect -f '{{.State.ExitCode}}' "$S")" == 0 ]] || fail "the service did not exit 0 on docker stop"

echo; echo "smoke: OK"
