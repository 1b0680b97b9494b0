#!/usr/bin/env bash
# Every GPU check and benchmark in one run of under ten minutes on one H100/H200:
#   env         the GPU, driver, versions, JAX devices, bf16 matmul rate (gpu_env.py)
#   train_step  the fused train step in bf16 at 4k-64k frames: steps/s, memory, MFU,
#               attention share, kernel profile, step over its kernels' floor
#               (train_step.py --gpu)
#   checks      attention implementations against the reference (cuDNN at odd lengths,
#               ring on a one-device seq mesh), the demo train step, DINOv2/BERT
#               against transformers in float32 (gpu_checks.py)
#   longest     the longest sequence one GPU trains, without and with remat (longest.py)
#   encoders    DINOv2-Base and BERT-base in bf16 against transformers (encoders_gpu.py)
#   encode      hemo_jax.encode: forward and JPEG-to-features pipeline, images/s (encode.py)
#   crops       ultralytics person crops at 720p, frames/s (crops.py)
#   attention   (only when asked for) attention.py --gpu at 4k-64k
# Each step has its own time limit and log and writes its JSON into a work folder as it
# goes; a step that fails or runs out of time does not stop the others, and the whole
# run stays within HEMO_GPU_SUITE_BUDGET_S seconds (default 560; 1500 for the smoke
# run, which compiles on a CPU). At the end, and also when the run is cut short,
# everything is bundled into three files in $OUT:
# results.json (every step's JSON), logs.txt (the end of every log) and summary.md (the
# tables, also printed). HEMO_GPU_SUITE_STEPS picks steps (e.g. "env longest").
#
# Packages the GPU machine lacks travel as wheels in .whl/ (see BENCHMARKS.md, "GPU
# suite", for the commands that fill it) and are installed into $HEMO_SITE (default
# /tmp/site); .whl/yolo11n-seg.pt, if there, is the crops step's detector. The project
# itself is imported from this tree.
#
#   OUT=/tmp/out bash benchmarks/gpu_suite.sh
#   HEMO_GPU_SUITE_SMOKE=1 OUT=/tmp/out bash benchmarks/gpu_suite.sh   # CPU, tiny sizes
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:?set OUT to the folder for results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SMOKE="${HEMO_GPU_SUITE_SMOKE:-0}"
SITE="${HEMO_SITE:-/tmp/site}"
WORK="${HEMO_GPU_SUITE_WORK:-$(mktemp -d /tmp/hemo_gpu_suite.XXXXXX)}"
mkdir -p "$WORK"
BUDGET="${HEMO_GPU_SUITE_BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 1500 || echo 560)}"
DEFAULT_STEPS="env train_step checks longest encoders encode crops"
WANTED=" ${HEMO_GPU_SUITE_STEPS:-$DEFAULT_STEPS} "
START=$(date +%s)
STEPS=()

bundle() { # the three result files, whatever happened before
  rm -f "$WORK"/*.tmp # a write cut off by a time limit
  "$PY" benchmarks/gpu_summary.py "$WORK" "$OUT" "${STEPS[@]}"
}
trap 'trap - EXIT; bundle' EXIT
trap 'exit 143' TERM INT

if [ "$SMOKE" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  # The wheels are for the GPU machine's Python 3.12, not for a smoke run here.
  # Without pip, unpacking does the same for the pure-Python wheels kept there.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl >>"$WORK/env.log" 2>&1 ||
    "$PY" -c 'import sys, zipfile
for w in sys.argv[2:]: zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE" .whl/*.whl \
      >>"$WORK/env.log" 2>&1 || echo "wheel install failed (env.log)"
fi
[ "$SMOKE" = 1 ] && SITE=""
export PYTHONPATH="${SITE:+$SITE:}$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_OFFLINE=1 YOLO_OFFLINE=1
# Lengths compiled by one step are found again by the next (longest.py's first probes).
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=2
YOLO=()
[ "$SMOKE" != 1 ] && [ -f .whl/yolo11n-seg.pt ] && YOLO=(--weights .whl/yolo11n-seg.pt)

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  ENV=(--matmul-size 256)
  TRAIN=(--quick --gpu-lengths 32 --gpu-width 16 --gpu-heads 2 --gpu-depth 1 --gpu-batch 2
    --warmup 1 --rounds 1 --steps 2 --matmul-size 128 --attention-repeats 1 --profile-steps 1)
  CHECKS=(--cpu-smoke)
  LONGEST=(--smoke)
  ENCODERS=(--smoke)
  ENCODE=(--quick)
  CROPS=(--quick)
  ATTENTION=(--quick --lengths 256 --impls cudnn blockwise --repeats 1)
  declare -A LIMIT=([env]=60 [train_step]=240 [checks]=300 [longest]=420 [encoders]=120
    [encode]=240 [crops]=240 [attention]=120)
else
  unset JAX_PLATFORMS # the GPU plugin is the default backend
  ENV=(--matmul-size 8192)
  # On the H200 (2026-11-27, float32 attention) each length's warm-up (compilation) took
  # 70-80 s; train_step.py starts no length after its --budget-s.
  TRAIN=(--gpu-lengths 4096 16384 32768 65536 --warmup 2 --rounds 1 --steps 5
    --profile-steps 2 --attention-repeats 5)
  CHECKS=()
  LONGEST=()
  ENCODERS=(--image-batch 64 --text-batch 64 --repeats 10)
  ENCODE=(--device cuda --dtypes bfloat16 --batch 64 --repeats 3 --pipeline-batches 4)
  CROPS=(--device cuda)
  ATTENTION=(--lengths 4096 16384 65536 --impls cudnn torch --repeats 3 --timeout 50)
  declare -A LIMIT=([env]=30 [train_step]=190 [checks]=110 [longest]=80 [encoders]=50
    [encode]=40 [crops]=40 [attention]=60)
fi

run_step() { # name command...: within its own limit and what is left of the budget
  local name=$1 limit left start rc
  shift
  [[ "$WANTED" == *" $name "* ]] || return 0
  left=$((BUDGET - ($(date +%s) - START) - 10))
  limit=$((LIMIT[$name] < left ? LIMIT[$name] : left))
  if [ "$limit" -lt 10 ]; then
    STEPS+=("$name:skipped:0")
    echo "== $name skipped: the budget of $BUDGET s is spent"
    return 0
  fi
  # @BUDGET@ in a command: its own deadline, for the steps that pace themselves (no new
  # length or probe after it), a fifth inside its limit.
  local args=("${@//@BUDGET@/$((limit - limit / 5 - 5))}")
  echo "== $name (limit ${limit} s): ${args[*]}"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "${args[@]}" >>"$WORK/$name.log" 2>&1
  rc=$?
  STEPS+=("$name:$rc:$(($(date +%s) - start))")
  echo "   exit $rc after $(($(date +%s) - start)) s; $name.log ends:"
  grep -v -i "warning" "$WORK/$name.log" | tail -n 4 | cut -c1-240 | sed 's/^/   | /'
}

run_step env "$PY" benchmarks/gpu_env.py --out "$WORK/env.json" "${ENV[@]}"
# The 64k-frame step needs room for its temporaries: the analytic model puts the
# activations alone at about 29 GB (flops.py).
run_step train_step env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 "$PY" benchmarks/train_step.py \
  --gpu --out "$WORK/train_step.json" --budget-s @BUDGET@ "${TRAIN[@]}"
run_step checks "$PY" benchmarks/gpu_checks.py --out "$WORK/checks.json" "${CHECKS[@]}"
run_step longest env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 "$PY" benchmarks/longest.py \
  --out "$WORK/longest.json" --budget-s @BUDGET@ "${LONGEST[@]}"
run_step encoders "$PY" benchmarks/encoders_gpu.py --out "$WORK/encoders.json" "${ENCODERS[@]}"
run_step encode "$PY" benchmarks/encode.py --out "$WORK/encode.json" "${ENCODE[@]}"
run_step crops "$PY" benchmarks/crops.py --out "$WORK/crops.json" "${CROPS[@]}" "${YOLO[@]}"
run_step attention "$PY" benchmarks/attention.py --gpu --out "$WORK/attention.json" \
  "${ATTENTION[@]}"
echo
