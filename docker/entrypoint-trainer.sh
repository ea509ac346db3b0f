#!/bin/sh
# One-shot trainer for docker compose: make sure the store holds a family to serve.
#
#   - a family already published under $PMERGE_STORE (*/manifest.json): nothing to do
#     (set PMERGE_FORCE_TRAIN=1 to train again anyway);
#   - else build the demo zoo in $PMERGE_ZOO unless a complete one is there
#     (one that models_store.zoo.Zoo opens: its manifest is written last);
#   - then train a family from the zoo into $PMERGE_STORE.
#
# Extra flags: PMERGE_ZOO_ARGS (e.g. "--finetune-steps 50"), PMERGE_TRAIN_ARGS (a learner and its
# flags, e.g. "map --budget 20"; flags alone train the default learner, pm).
# Anything given on the command line replaces the whole procedure:
#   docker compose run --rm trainer pmerge zoo --help
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

ZOO="${PMERGE_ZOO:-/store/zoo}"
STORE="${PMERGE_STORE:-/store/families}"

has_family() {
    for m in "$STORE"/*/manifest.json; do
        [ -f "$m" ] && return 0
    done
    return 1
}

zoo_complete() {
    python -c 'import sys; from models_store.zoo import Zoo; Zoo(sys.argv[1])' "$ZOO" >/dev/null 2>&1
}

mkdir -p "$STORE" "$ZOO"

if has_family && [ "${PMERGE_FORCE_TRAIN:-0}" != 1 ]; then
    echo "pmerge-trainer: $STORE already holds a family; nothing to do:"
    ls -1d "$STORE"/*/
    exit 0
fi

if zoo_complete; then
    echo "pmerge-trainer: reusing the zoo in $ZOO"
else
    echo "pmerge-trainer: building the demo zoo in $ZOO"
    # shellcheck disable=SC2086
    pmerge zoo --demo --out "$ZOO" ${PMERGE_ZOO_ARGS:-}
fi

echo "pmerge-trainer: training a family from $ZOO into $STORE"
# shellcheck disable=SC2086
pmerge train ${PMERGE_TRAIN_ARGS:-} --zoo "$ZOO" --store "$STORE"

if ! has_family; then
    echo "pmerge-trainer: error: pmerge train finished but $STORE has no */manifest.json" >&2
    exit 1
fi
# the newest family's front, kept in the store for GET /front and the page at /ui
pmerge front --store "$STORE" --grid 2 --random 0 --baselines none --merges none --test-limit 500 --out /tmp/front >/dev/null
echo "pmerge-trainer: done:"
ls -1d "$STORE"/*/
