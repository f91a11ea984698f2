# shellcheck shell=bash disable=SC2034  # (TRAIN_ARGS, JIGSAW_BIN are used by the sourcing script)
# Sourced by the launch scripts: their common arguments, the venv, the thread count.
#
# Every launch script takes   CONFIG DS_CONFIG DOMAIN TENSOR [more jigsaw-train arguments ...]
#   CONFIG     the jigsaw config JSON (configs/quickstart.json, ...)
#   DS_CONFIG  the DeepSpeed config JSON (configs/ds_zero1_fp32.json, ...)
#   DOMAIN     parallel.domain, TENSOR parallel.tensor (the data-parallel size is what the world leaves)
# and these environment variables:
#   JIGSAW_VENV      the venv with jigsaw_ds installed (default: REPO/.venv, made by scripts/install.sh)
#   OMP_NUM_THREADS  threads per rank (default 1: right for CPU ranks; raise it for data loading on GPU nodes)

jigsaw_setup() {  # sets JIGSAW_BIN and TRAIN_ARGS, or exits 2 with a usage message
  if [ $# -lt 4 ]; then
    echo "usage: $(basename "$0") CONFIG DS_CONFIG DOMAIN TENSOR [jigsaw-train arguments ...]" >&2
    exit 2
  fi
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  JIGSAW_VENV=${JIGSAW_VENV:-$root/.venv}
  JIGSAW_BIN=$JIGSAW_VENV/bin
  if [ ! -x "$JIGSAW_BIN/jigsaw-train" ]; then
    echo "$(basename "$0"): no $JIGSAW_BIN/jigsaw-train: run scripts/install.sh or set JIGSAW_VENV" >&2
    exit 2
  fi
  TRAIN_ARGS=(--config "$1" --deepspeed_config "$2" --set "parallel.domain=$3" --set "parallel.tensor=$4" "${@:5}")
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
}
