#!/usr/bin/env bash
# shellcheck disable=SC2317  # the functions a step runs are called through `step`, out of its sight
# Everything that needs a GPU, in one command (issue 21). Run from anywhere:
#
#   bash tools/gpu_check.sh [REPORT_DIR]      # default gpu_report/ in the repository
#   bash tools/gpu_check.sh --fetch-wheels    # on a machine with PyPI: wheels for one without
#
# Steps, in order of importance, each under its own timeout; a step that fails is recorded
# and the next one runs. The whole run keeps within GPU_CHECK_BUDGET seconds (default 570,
# for one 10-minute call on one H100): a step that no longer fits is reported as skipped.
#
#   env            the machine: nvidia-smi, torch, CUDA, cuDNN, `protocaffe device_query`
#   cuda-tests     pytest -m cuda (every CUDA test but the parity file)
#   parity         tests/test_gpu_parity.py: golden layer cases and nets, CUDA against the CPU
#   time-*         `protocaffe time`, CaffeNet and AlexNet deploy at batch 256, fp32 and bf16,
#                  eager, --compile, --cuda_graphs (compiled in reduce-overhead mode)
#   train-*        tools/bench_train.py: the shapes example trained from an LMDB by the Data
#                  layer, images/s and the loop's overhead over the bare net, fp32 and bf16
#   nccl           one-GPU NCCL start through protocaffe.distributed (torchrun, world size 1)
#   suite          the whole test suite with CUDA available
#
# Without a CUDA device each GPU step reports "skipped: no CUDA device" and the rest (env, the
# data the steps need) runs. GPU_CHECK_REHEARSE=1 runs the GPU steps' commands on the CPU at
# toy sizes instead (batch 2, a few iterations, gloo for NCCL), to check the script itself.
#
# The report: REPORT_DIR/report.md (every figure, pass/fail per step, a summary) and
# REPORT_DIR/logs.txt (each step's full output). Exit status: the number of failed steps.
#
# On the lent GPU machines (image 'cuda': torch, pytest, pytest-xdist, no lmdb, an older
# protobuf than the generated modules need) missing packages travel as wheels: run
# `bash tools/gpu_check.sh --fetch-wheels` here first, then carry .whl; this script installs
# them into a scratch folder ahead of everything else on PYTHONPATH.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=(protobuf lmdb pydot grpcio grpcio-tools)

fetch_wheels() {
  # this machine's versions of the packages the GPU image lacks, built for its Python 3.12
  mkdir -p "$ROOT/.whl"
  for pkg in "${WHEELS[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$pkg'))") || return 1
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$ROOT/.whl" "$pkg==$version" || return 1
  done
  echo "wheels in $ROOT/.whl: carry .whl to the GPU machine"
}

if [ "${1:-}" = "--fetch-wheels" ]; then
  fetch_wheels
  exit
fi

REPORT=$(mkdir -p "${1:-$ROOT/gpu_report}" && cd "${1:-$ROOT/gpu_report}" && pwd)
BUDGET=${GPU_CHECK_BUDGET:-570}
REHEARSE=${GPU_CHECK_REHEARSE:-0}
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MD="$REPORT/report.md"
LOGS="$REPORT/logs.txt"
: >"$LOGS"
RESULTS=()   # one "name|status|seconds|figures" per step

# ---- the environment: the repository on PYTHONPATH, carried wheels, a `protocaffe` command ----
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$WORK/site" "$ROOT"/.whl/*.whl >"$WORK/wheels.log" 2>&1; then
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
  else
    echo "[gpu_check] the wheels in .whl do not install here (they are for the GPU image's Python 3.12);" \
         "going on without them: $(tail -1 "$WORK/wheels.log")" >&2
  fi
fi
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec "%s" -m protocaffe "$@"\n' "$(command -v "$PYTHON")" >"$WORK/bin/protocaffe"
chmod +x "$WORK/bin/protocaffe"
export PATH="$WORK/bin:$PATH"
cd "$ROOT" || exit 1

HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
GPU=(--gpu 0); DEVICE=cuda:0; BATCH=256; ITERS=10; NCCL_ITERS=40
TRAIN_ARGS=(--gpu 0 --images 2000 --iterations 20 --rounds 2)
if [ "$HAS_CUDA" != 1 ] && [ "$REHEARSE" = 1 ]; then
  GPU=(); DEVICE=cpu; BATCH=2; ITERS=1; NCCL_ITERS=4; TRAIN_ARGS=(--images 128 --iterations 2 --rounds 1)
fi

# ---- running a step ------------------------------------------------------------------------

remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME TIMEOUT NEEDS_GPU FIGURES_FUNCTION COMMAND...: run COMMAND under TIMEOUT (cut to
# the budget left), its output into logs.txt, and record pass/fail/skipped with its figures.
step() {
  local name=$1 limit=$2 gpu=$3 figures=$4 left status rc began seconds out
  shift 4
  left=$(remaining)
  if [ "$gpu" = 1 ] && [ "$HAS_CUDA" != 1 ] && [ "$REHEARSE" != 1 ]; then
    RESULTS+=("$name|skipped: no CUDA device|0|")
    return
  fi
  if [ "$left" -lt 30 ]; then
    RESULTS+=("$name|skipped: out of time (budget ${BUDGET}s)|0|")
    return
  fi
  [ "$limit" -gt $((left - 10)) ] && limit=$((left - 10))
  out="$WORK/$name.log"
  began=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >"$out" 2>&1  # bash: a step may be a function
  rc=$?
  seconds=$(($(date +%s) - began))
  case $rc in
    0) status=pass ;;
    124|137) status="FAIL: timed out after ${limit}s" ;;
    *) status="FAIL: exit $rc" ;;
  esac
  { printf '\n===== %s (%s, %ss): %s\n' "$name" "$status" "$seconds" "$*"; cat "$out"; } >>"$LOGS"
  RESULTS+=("$name|$status|$seconds|$("$figures" "$out" | awk '{ gsub(/\|/, "/"); printf "%s%s", (NR > 1 ? "; " : ""), $0 }')")
  echo "[gpu_check] $name: $status (${seconds}s)" >&2
}

# figures: what a step's log says, one line each
no_figures() { :; }
pytest_figures() { grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|no tests ran' "$1" | tail -1 | tr -d '='; }
time_figures() {
  grep -oE '(Average (Forward|Backward|Forward-Backward)( pass)?: [0-9.e+-]+ ms|Precision .*)' "$1" \
    | sed -E 's/Average //; s/ pass//'
}
train_figures() { grep -E '^(train|bare|overhead)' "$1" | sed -E 's/ +/ /g; s/ rounds:.*//'; }
nccl_figures() { grep -oE 'Rank [0-9]+ of [0-9]+, on [a-z0-9:]+|Iteration [0-9]+ \([0-9.]+ iter/s|Optimization Done' "$1" | tail -3; }
env_figures() { grep -E '^(torch|GPU|CPU|cuda|cudnn)|\] (CPU|GPU|No CUDA)' "$1" | sed -E 's/^.*\] //'; }

# ---- the data the steps need: batch-256 deploy nets, an LMDB and a solver for the NCCL start --

prepare() {
  for net in bvlc_reference_caffenet bvlc_alexnet; do
    sed -E "s/dim: 10 dim: 3 dim: 227/dim: $BATCH dim: 3 dim: 227/" "models/$net/deploy.prototxt" >"$WORK/$net.prototxt"
    grep -q "dim: $BATCH dim: 3" "$WORK/$net.prototxt" || return 1
  done
  protocaffe make_shapes --out "$WORK/shapes" --train 512 --val 100 --size 64 || return 1
  sed "s#examples/shapes/data#$WORK/shapes#" examples/shapes/train_val.prototxt >"$WORK/shapes_net.prototxt"
  sed -e "s#examples/shapes/train_val.prototxt#$WORK/shapes_net.prototxt#" -e "s/^max_iter:.*/max_iter: $NCCL_ITERS/" \
      -e "s/^display:.*/display: $((NCCL_ITERS / 2))/" -e 's/^test_interval:.*/test_interval: 1000/' \
      -e 's/^test_iter:.*/test_iter: 1/' -e "s#^snapshot_prefix:.*#snapshot_prefix: \"$WORK/snap\"#" \
      examples/shapes/solver.prototxt >"$WORK/shapes_solver.prototxt"
  printf 'snapshot_after_train: false\ntest_initialization: false\n' >>"$WORK/shapes_solver.prototxt"
}

environment() {
  date -u '+date %Y-%m-%d %H:%M UTC'
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
  "$PYTHON" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}")
for module in ("google.protobuf", "lmdb", "cv2", "numpy"):
    try:
        m = __import__(module, fromlist=["x"])
        print(f"{module} {getattr(m, '__version__', '?')}")
    except ImportError as e:
        print(f"{module} MISSING ({e}): bash tools/gpu_check.sh --fetch-wheels, then carry .whl")
EOF
  protocaffe device_query
}

nccl_start() {
  # one rank through protocaffe.distributed: torchrun's variables make `train` join a process
  # group (NCCL on the GPU, gloo on the CPU) before its solver runs
  PROTOCAFFE_DIST_TIMEOUT=60 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m protocaffe train --solver "$WORK/shapes_solver.prototxt" "$@" 2>&1 | tee "$WORK/nccl.out"
  grep -q "Rank 0 of 1, on $DEVICE" "$WORK/nccl.out" && grep -q "Optimization Done" "$WORK/nccl.out"
}

time_step() {  # time_step NET PRECISION MODE
  local flags=()
  [ "$3" = compile ] && flags=(--compile)
  [ "$3" = cuda_graphs ] && flags=(--cuda_graphs)
  if [ "$3" = cuda_graphs ] && [ "$HAS_CUDA" != 1 ] && [ "$REHEARSE" = 1 ]; then
    RESULTS+=("time-$1-$2-$3|skipped: no CUDA device (CUDA graphs cannot be rehearsed)|0|")
    return
  fi
  step "time-$1-$2-$3" "$4" 1 time_figures \
    protocaffe time --model "$WORK/bvlc_$1.prototxt" --iterations "$ITERS" --precision "$2" "${GPU[@]}" "${flags[@]}"
}

# ---- the steps -----------------------------------------------------------------------------

export ROOT PYTHON WORK BATCH DEVICE NCCL_ITERS
export -f environment prepare nccl_start

step env 60 0 env_figures environment
step prepare 120 0 no_figures prepare
if [ "$HAS_CUDA" = 1 ]; then
  XDIST=$("$PYTHON" -c "import xdist; print('-n 8 --dist loadfile')" 2>/dev/null)
  export OMP_NUM_THREADS=2
fi
# shellcheck disable=SC2086  # XDIST is empty or several words
step cuda-tests 240 1 pytest_figures "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda \
  --ignore tests/test_gpu_parity.py ${XDIST:-}
step parity 180 1 pytest_figures "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu_parity.py
for net in reference_caffenet alexnet; do
  for precision in fp32 bf16; do
    time_step "$net" "$precision" eager 90
  done
done
for precision in fp32 bf16; do
  step "train-$precision" 120 1 train_figures "$PYTHON" tools/bench_train.py --precision "$precision" "${TRAIN_ARGS[@]}"
done
step nccl 90 1 nccl_figures nccl_start "${GPU[@]}"
if [ "$REHEARSE" != 1 ]; then
  # shellcheck disable=SC2086
  step suite 360 1 pytest_figures "$PYTHON" -m pytest -q -p no:cacheprovider ${XDIST:-}
else
  RESULTS+=("suite|skipped: not rehearsed (the CPU suite runs in CI)|0|")
fi
for mode in compile cuda_graphs; do
  for net in reference_caffenet alexnet; do
    for precision in fp32 bf16; do
      time_step "$net" "$precision" "$mode" 150
    done
  done
done

# ---- the report ----------------------------------------------------------------------------

passed=0; failed=0; skipped=0
if [ "$HAS_CUDA" = 1 ]; then ran_on=CUDA
elif [ "$REHEARSE" = 1 ]; then ran_on="rehearsal on the CPU"
else ran_on="no CUDA device"
fi
{
  echo "# GPU check ($ran_on)"
  echo
  echo "Command: \`bash tools/gpu_check.sh\`, budget ${BUDGET}s, took $(($(date +%s) - START))s."
  echo "Batch $BATCH for \`protocaffe time\` (${ITERS} iterations); every step's output in logs.txt."
  echo
  echo "| step | result | s | figures |"
  echo "|---|---|---:|---|"
  for row in "${RESULTS[@]}"; do
    IFS='|' read -r name status seconds figures <<<"$row"
    echo "| $name | $status | $seconds | $figures |"
    case $status in
      pass) passed=$((passed + 1)) ;;
      skipped*) skipped=$((skipped + 1)) ;;
      *) failed=$((failed + 1)) ;;
    esac
  done
  echo
  echo "**Summary:** $passed passed, $failed failed, $skipped skipped."
} >"$MD"
cat "$MD"
exit "$failed"
