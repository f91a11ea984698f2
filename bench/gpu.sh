#!/usr/bin/env bash
# The GPU measurement in one go (issue 18): on a one-GPU machine that has torch but no network, in <= 10 min.
#
# Prepare here (CPU machine, once):   bash bench/device-wheels.sh        # .device-wheels, git-ignored
# Run there, from the repository root, carrying .device-wheels:      bash bench/gpu.sh
#   (with the device tool: run(command="bash bench/gpu.sh", carry=[".device-wheels"], timeout_s=590))
#
# Steps, each under its own time limit, each writing its JSON as it measures (a cut-off run keeps the rest):
#   1. check.json    serial model on CUDA fp32 and bf16 vs the CPU float64 reference (bench/gpu_check.py)
#   2. step.json     bench/step.py, configs/era5_025deg.json on one GPU, bf16, eager, with the bare stack;
#                    device time per phase (CUDA events) and per kernel kind over 3 profiled steps
#   3. step_workers8.json  the same step with 8 loader workers (4 do not keep up: 2026-12-04)
#   4. step_ckpt.json     activation checkpointing, batch 4
#   5. forecast.json      jigsaw-forecast's engine on the 0.25 deg config, fp32 and bf16: forecast steps/s
#   6. step_compile.json  engine.compile()
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
# worker): use 4 workers only where it holds them, else 1.
shm_gb=$(df -BG --output=avail /dev/shm | tail -1 | tr -dc 0-9)
workers=4; [ "${shm_gb:-0}" -ge 16 ] || workers=1
echo "/dev/shm ${shm_gb} GB free: $workers loader workers" >>"$LOG"

step() {  # step NAME LIMIT_S ARGS...: run one measurement with its own time limit; log its status
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    echo "=== $name rc=$?" | tee -a "$LOG"
}

step check 150 python3 bench/gpu_check.py --out "$OUT/check.json"
step eager 170 python3 bench/step.py --workers $workers --profile 3 --out "$OUT/step.json"
step workers8 90 python3 bench/step.py --skip-bare --steps 12 --workers $((2 * workers)) --out "$OUT/step_workers8.json"
step ckpt 90 python3 bench/step.py --skip-bare --checkpointing --batch 4 --workers $workers --out "$OUT/step_ckpt.json"
step forecast 120 python3 bench/forecast.py --out "$OUT/forecast.json"
step compile 180 python3 bench/step.py --compile --workers $workers --out "$OUT/step_compile.json"
echo "=== done $(date -u +%T)" | tee -a "$LOG"
grep -E "^(run|cpu|cuda|all|FAILED|fp32:|bf16:)|^(what|dense|bare|DeepSpeed|data wait|perf model|weights|peak|device time|profiled|optimizer floor|  +[0-9.]+ ms)|=== " "$LOG" | tail -80
