#!/usr/bin/env bash
# The GPU suite in one command on the device machine (benchmarks/README.md, "GPU suite"): install
# the carried wheelhouse offline, then run both throughput benchmarks, each writing its JSON object
# and its log to $OUT. Ends within 10 minutes: each benchmark runs under its own time limit.
#
#   OUT=/some/dir benchmarks/gpu/run.sh
#
# Environment (defaults are the device machine's): PYTHON (python3, the image's torch Python),
# WHEELHOUSE (.whl, built by build_wheelhouse.py), SITE (/tmp/gpu-suite/site-packages, where the wheels go),
# TEACHER_ARGS / TRAIN_ARGS (options; tests/benchmarks/test_gpu_suite.py passes --smoke; TRAIN_ARGS
# defaults to --batch-sizes 4: each batch size loads the 17 GB checkpoint once more),
# TEACHER_LIMIT_S / TRAIN_LIMIT_S (170 / 400 seconds).
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder the JSON goes to}"
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-.whl}
# A path with site-packages in it: dill (datasets' fingerprints) pickles modules elsewhere by value.
SITE=${SITE:-/tmp/gpu-suite/site-packages}

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$WHEELHOUSE"/*.whl || exit 1
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1

status=0
run() {  # name, limit in seconds, extra options...
  local name=$1 limit=$2
  shift 2
  timeout --kill-after=10 "$limit" "$PYTHON" "benchmarks/$name.py" "$@" \
    >"$OUT/$name.json" 2>"$OUT/$name.log"
  local rc=$?
  echo "$name: exit $rc ($(wc -c <"$OUT/$name.json") bytes of JSON)"
  [ "$rc" -eq 0 ] || { status=1; tail -n 20 "$OUT/$name.log"; }
}
# shellcheck disable=SC2086  # the ARGS are word lists
run teacher_throughput "${TEACHER_LIMIT_S:-170}" ${TEACHER_ARGS:-}
# shellcheck disable=SC2086
run train_throughput "${TRAIN_LIMIT_S:-400}" ${TRAIN_ARGS---batch-sizes 4}
exit "$status"
