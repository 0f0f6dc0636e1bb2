#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md in one go (issue 7): under 5 minutes on an H100/H200.
#
#   bash benchmarks/gpu.sh            # on a machine with a GPU; prints the card, the date and every table
#   bash benchmarks/gpu.sh --smoke    # the same commands at tiny sizes on the CPU (checks they run)
#
# What it runs (each step under its own `timeout`, so one hang cannot eat the session):
#   1. bench_train_step.py  ResNet-18, batch 256, bf16: our masked step vs a plain JAX step (goal >= 0.95x)
#   2. bench_mfu.py         bf16 matmul rate, ResNet-18 step img/s and MFU (goals: >= 30% MFU, >= 72k img/s,
#                           i.e. 2.4x the PyTorch-compiled anchor of 29.9k img/s in DESIGN.md section 6)
#   3. bench_runs.py        K = 1..16 runs per strategy vs the loop, small CNN (goal: >= 4x single-run at K = 8)
#   4. bench_runs.py        K = 1, 2, 4, 8 for ResNet-18 at batch 128, bf16 (goal: never below the loop)
# Paste the output into benchmarks/RESULTS.md ("GPU" section) with the card and date it prints.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python

if [ "${1:-}" = "--smoke" ]; then
  DEV=(--device cpu)
  # The small CNN stands in for ResNet-18 here: compiling ResNet-18 (vmapped, bf16) takes minutes on a
  # shared 2-core CPU. The flags are otherwise those of the GPU run.
  STEP=(--model small_cnn --batch 8 --steps 1 --repeats 1 --k --no-ablations --dtype bfloat16)
  MFU=(--smoke)
  RUNS_CNN=(--smoke)
  RUNS_RESNET=(--model small_cnn --k 1 2 --batch 8 --batches 1 --repeats 1 --strategies loop vmap map auto --dtype bfloat16)
  LIMIT=240
else
  DEV=(--device gpu)
  STEP=(--model resnet18 --batch 256 --steps 50 --repeats 5 --k --no-ablations --dtype bfloat16)
  MFU=(--batch 256 --steps 50 --repeats 5 --matmul-n 8192 --dtype bfloat16)
  RUNS_CNN=(--model small_cnn --k 1 2 4 8 16 --batch 128 --batches 50 --repeats 3)
  RUNS_RESNET=(--model resnet18 --k 1 2 4 8 --batch 128 --batches 10 --repeats 2 --strategies loop vmap map auto --dtype bfloat16)
  LIMIT=120
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
date -u
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"

run() {  # run LABEL CMD...: one benchmark under a time limit; a failure is reported, not fatal
  local label=$1; shift
  echo; echo "=== $label: $*"
  local t0=$SECONDS
  timeout "$LIMIT" "$@"; local rc=$?
  echo "=== $label: exit $rc after $((SECONDS - t0)) s"
}

run "overhead (ours vs plain JAX), ResNet-18" "$PY" benchmarks/bench_train_step.py "${DEV[@]}" "${STEP[@]}"
run "MFU, ResNet-18" "$PY" benchmarks/bench_mfu.py "${DEV[@]}" "${MFU[@]}"
run "K runs, small CNN" "$PY" benchmarks/bench_runs.py "${DEV[@]}" "${RUNS_CNN[@]}"
run "K runs, ResNet-18" "$PY" benchmarks/bench_runs.py "${DEV[@]}" "${RUNS_RESNET[@]}"
echo; echo "total $SECONDS s"
