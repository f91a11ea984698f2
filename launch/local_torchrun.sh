#!/usr/bin/env bash
# One node, torchrun: NPROC ranks (default 4; one per GPU, or CPU ranks on a machine without GPUs).
#
#   NPROC=4 launch/local_torchrun.sh configs/quickstart.json configs/ds_zero1_fp32.json 2 2
#
# Arguments and variables: see launch/common.sh. torchrun picks a free port (--standalone).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
jigsaw_setup "$@"
exec "$JIGSAW_BIN/torchrun" --standalone --nproc_per_node "${NPROC:-4}" "$JIGSAW_BIN/jigsaw-train" "${TRAIN_ARGS[@]}"
