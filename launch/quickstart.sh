#!/usr/bin/env bash
# The main job on its embedded default: make a small synthetic ERA5-like store, then train WeatherMixer
# on 4 CPU ranks with the Jigsaw layout data 1 x domain 2 x tensor 2 under the deepspeed launcher.
# Run again, it continues from the newest complete checkpoint (--resume); rm -rf runs/quickstart starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/deepspeed --num_gpus ${NPROC:-4} .venv/bin/jigsaw-train \
  --config configs/quickstart.json --deepspeed_config configs/ds_zero1_fp32.json --resume "$@"
