#!/usr/bin/env bash
# One node, the deepspeed launcher: NPROC ranks (default 4; one per GPU, or CPU ranks on a machine without GPUs).
#
#   NPROC=8 launch/local_deepspeed.sh configs/quickstart.json configs/ds_zero1_bf16.json 4 2
#
# Arguments and variables: see launch/common.sh. DS_ARGS: more deepspeed launcher options (e.g. "--master_port 29600").
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
jigsaw_setup "$@"
# shellcheck disable=SC2086
exec "$JIGSAW_BIN/deepspeed" --num_gpus "${NPROC:-4}" ${DS_ARGS:-} "$JIGSAW_BIN/jigsaw-train" "${TRAIN_ARGS[@]}"
