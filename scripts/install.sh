#!/usr/bin/env bash
# Create .venv (if missing) with the CPU build of PyTorch and jigsaw_ds with its real dependencies.
# Idempotent: a second run only checks. Set JIGSAW_VENV to use another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${JIGSAW_VENV:-.venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import jigsaw_ds, deepspeed, megatron.core, zarr, tensorstore, cfgrib, torch_harmonics, dask.distributed, crc32c, dinosaur" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned (constraints.txt): anything else would pull several GB of CUDA wheels here.
  "$venv/bin/python" -m pip install -q -c constraints.txt torch
  "$venv/bin/python" -m pip install -q -c constraints.txt -e ".[test,plots,readers,bench,pe]"
  # torch-harmonics (shallow-water generator) pins a newer torch in its metadata: keep ours.
  "$venv/bin/python" -m pip install -q --no-deps "torch-harmonics==0.9.3"
fi
echo "jigsaw_ds environment ready: $venv"
