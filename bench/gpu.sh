#!/usr/bin/env bash
# The GPU measurement in one go: on a one-GPU machine that has torch but no network, in <= 10 min.
#
# Prepare here (CPU machine, once):   bash bench/device-wheels.sh        # .device-wheels, git-ignored
# Run there, from the repository root, carrying .device-wheels:      bash bench/gpu.sh
#   (with the device tool: run(command="bash bench/gpu.sh", carry=[".device-wheels"], timeout_s=590))
#
# Steps, each under its own time limit (540 s in all), each writing its JSON as it measures (a cut-off run keeps
# the rest). Every step figure is by throughput: work / total time, mean with p95 and max beside it.
#   1. check.json          serial model on CUDA fp32 and bf16 vs the CPU float64 reference (bench/gpu_check.py)
#   2. step.json           bench/step.py, configs/era5_025deg.json on one GPU, bf16, eager, with the bare stack and
#                          the optimizer floor; the trainer's loader with 8 reading threads (ring of pinned buffers,
#                          normalised on the GPU); device time per phase and per kernel kind over 3 profiled steps
#   3. step_threads4.json  the same step, 4 reading threads
#   4. step_workers8.json  the same step, 8 DataLoader worker processes (the path before: /dev/shm + pinning copies)
#   5. forecast.json       jigsaw-forecast's engine on the 0.25 deg config, fp32 and bf16: forecast steps/s
#   6. step_sync_debug.json  one eager step with --sync-debug: a host-device sync inside the step fails it (rc 1),
#                          gpu.log names where ("sync-debug:"); apart from the timed runs, which it would spoil
#   with EXTRA=1 also      step_ckpt.json (activation checkpointing, batch 4), step_compile.json (engine.compile())
# Results go to $OUT (the device tool's folder) or bench/results/gpu/; the log to gpu.log beside them.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0   # 9.0a (the machine's) crashes DeepSpeed's op builder

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device-wheels/*.whl >>"$LOG" 2>&1 || { echo "wheel install failed"; tail "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, deepspeed, megatron.core, zarr, tensorstore, dask; from importlib.metadata import version as v; print("torch", torch.__version__, "deepspeed",
deepspeed.__version__, "zarr", zarr.__version__, "tensorstore", v("tensorstore"))'
  nproc; free -g | head -2; df -h /dev/shm /tmp; } >>"$LOG" 2>&1

# DataLoader workers pass batches through /dev/shm (about 1.2 GB per batch of 2 at 0.25 deg, 2 in flight per
# worker): the workers row runs only where it holds them.
shm_gb=$(df -BG --output=avail /dev/shm | tail -1 | tr -dc 0-9)
echo "/dev/shm ${shm_gb} GB free" >>"$LOG"

step() {  # step NAME LIMIT_S ARGS...: run one measurement with its own time limit; log its status
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    echo "=== $name rc=$?" | tee -a "$LOG"
}

step check 45 python3 bench/gpu_check.py --out "$OUT/check.json"   # 16 s on the H200 (2026-12-04)
step eager 170 python3 bench/step.py --read-threads 8 --profile 3 --out "$OUT/step.json"
step threads4 80 python3 bench/step.py --skip-bare --steps 12 --read-threads 4 --out "$OUT/step_threads4.json"
[ "${shm_gb:-0}" -ge 24 ] && step workers8 90 python3 bench/step.py --skip-bare --steps 12 --workers 8 --out "$OUT/step_workers8.json"
step forecast 100 python3 bench/forecast.py --out "$OUT/forecast.json"
step sync_debug 50 python3 bench/step.py --skip-bare --steps 1 --read-threads 8 --sync-debug --out "$OUT/step_sync_debug.json"
if [ "${EXTRA:-0}" = 1 ]; then
  step ckpt 90 python3 bench/step.py --skip-bare --checkpointing --batch 4 --out "$OUT/step_ckpt.json"
  step compile 180 python3 bench/step.py --compile --out "$OUT/step_compile.json"
fi
echo "=== done $(date -u +%T)" | tee -a "$LOG"
grep -E "^(run|cpu|cuda|all|FAILED|fp32:|bf16:|sync-debug:)|^(what|dense|bare|DeepSpeed|data wait|whole step|perf model|weights|peak|device time|profiled|optimizer floor|  +[0-9.]+ ms)|=== " "$LOG" | tail -80
