#!/usr/bin/env bash
# Every GPU check and benchmark in one run of about eight minutes on one H100/H200:
#   env         the GPU, driver, versions, JAX devices, bf16 matmul rate (gpu_env.py)
#   train_step  benchmarks/train_step.py --gpu (steps/s and MFU of the fused model)
#   checks      attention implementations against the reference, the demo train step,
#               DINOv2/BERT against transformers (gpu_checks.py)
#   attention   benchmarks/attention.py --gpu (bf16: cudnn, blockwise, torch SDPA, xla)
# then a markdown summary on stdout (gpu_summary.py). Each step has its own time limit,
# its log ($OUT/<step>.log) and its results JSON in $OUT, written as it goes; a step that
# fails or runs out of time does not stop the others, and the whole run stays within
# HEMO_GPU_SUITE_BUDGET_S seconds (default 500; 900 for the smoke run).
# HEMO_GPU_SUITE_STEPS picks steps (e.g. "checks train_step" to rerun two). Wheels in
# .whl/ (what the machine lacks: ml-collections) are installed into $HEMO_SITE (default
# /tmp/site); the project itself is imported from this tree.
#
#   OUT=/tmp/out bash benchmarks/gpu_suite.sh
#   HEMO_GPU_SUITE_SMOKE=1 OUT=/tmp/out bash benchmarks/gpu_suite.sh   # CPU dry run, tiny sizes
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:?set OUT to the folder for results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SMOKE="${HEMO_GPU_SUITE_SMOKE:-0}"
SITE="${HEMO_SITE:-/tmp/site}"
BUDGET="${HEMO_GPU_SUITE_BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 900 || echo 500)}"
WANTED=" ${HEMO_GPU_SUITE_STEPS:-env train_step checks attention} "
START=$(date +%s)

for name in $WANTED; do : >"$OUT/$name.log"; done
if compgen -G ".whl/*.whl" >/dev/null; then
  # Without pip, unpacking does the same for the pure-Python wheels kept there.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl >>"$OUT/env.log" 2>&1 ||
    "$PY" -c 'import sys, zipfile
for w in sys.argv[2:]: zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE" .whl/*.whl \
      >>"$OUT/env.log" 2>&1 || echo "wheel install failed (env.log)"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  MATMUL=(--matmul-size 512)
  CHECKS=(--cpu-smoke)
  ATTENTION=(--quick --lengths 512 256 --impls cudnn blockwise torch --repeats 2)
  TRAIN=(--quick --gpu-lengths 64 --warmup 1 --rounds 1 --steps 2)
  declare -A LIMIT=([env]=120 [train_step]=300 [checks]=300 [attention]=200)
else
  unset JAX_PLATFORMS # the GPU plugin is the default backend
  MATMUL=(--matmul-size 8192)
  CHECKS=()
  # Measured on an H200 (2026-11-27): each train-step length spends ~70-80 s in its
  # warm-up (compilation), then 5 steps take 0.3-8 s; the attention checks took 100 s
  # for T=7 and 128; attention.py 110 s for 4k and 16k.
  ATTENTION=(--lengths 4096 16384 --impls cudnn blockwise torch xla --repeats 3 --timeout 50)
  TRAIN=(--gpu-lengths 4096 16384 32768 --warmup 2 --rounds 1 --steps 5)
  declare -A LIMIT=([env]=25 [train_step]=280 [checks]=110 [attention]=70)
fi

STEPS=()
run_step() { # name command...: within its own limit and what is left of the budget
  local name=$1 limit left start rc
  shift
  [[ "$WANTED" == *" $name "* ]] || return 0
  left=$((BUDGET - ($(date +%s) - START) - 5))
  limit=$((LIMIT[$name] < left ? LIMIT[$name] : left))
  if [ "$limit" -lt 10 ]; then
    STEPS+=("$name:skipped:0")
    echo "== $name skipped: the budget of $BUDGET s is spent"
    return 0
  fi
  echo "== $name (limit ${limit} s): $*"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  rc=$?
  STEPS+=("$name:$rc:$(($(date +%s) - start))")
  echo "   exit $rc after $(($(date +%s) - start)) s; $name.log ends:"
  grep -v -i "warning" "$OUT/$name.log" | tail -n 4 | cut -c1-240 | sed 's/^/   | /'
}

run_step env "$PY" benchmarks/gpu_env.py --out "$OUT/env.json" "${MATMUL[@]}"
# The 32k-frame step needs ~40 GB of temporaries (compile-time estimate): leave it room.
run_step train_step env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 "$PY" benchmarks/train_step.py \
  --gpu --out "$OUT/train_step_gpu.json" "${TRAIN[@]}"
run_step checks "$PY" benchmarks/gpu_checks.py --out "$OUT/gpu_checks.json" "${CHECKS[@]}"
run_step attention "$PY" benchmarks/attention.py --gpu --out "$OUT/attention_gpu.json" \
  "${ATTENTION[@]}"

rm -f "$OUT"/*.tmp # a write cut off by a time limit
echo
"$PY" benchmarks/gpu_summary.py "$OUT" "${STEPS[@]}"
