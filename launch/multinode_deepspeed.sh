#!/usr/bin/env bash
# Many nodes, the deepspeed launcher and a hostfile ("HOST slots=N" per line, N = ranks on that host).
#
# With ssh (deepspeed's default): run once, on any node. It needs passwordless ssh to every host, pdsh
# (or DS_ARGS="--launcher openmpi" ...), and the repo and venv at the same path on every node. Variables
# other than NCCL*/PYTHON* do not travel over ssh: put them (OMP_NUM_THREADS, ...) in ./.deepspeed_env.
#
#   HOSTFILE=hosts launch/multinode_deepspeed.sh configs/era5_025deg.json configs/ds_zero1_bf16.json 4 2
#
# Without ssh: run it on every node yourself, each with its NODE_RANK (0 = first host of the hostfile)
# and the first host's address as MASTER_ADDR (the same MASTER_PORT everywhere):
#
#   HOSTFILE=hosts NODE_RANK=1 MASTER_ADDR=node0 launch/multinode_deepspeed.sh CONFIG DS_CONFIG 4 2
#
# Arguments and variables: see launch/common.sh; MASTER_PORT (default 29500); DS_ARGS: more launcher options.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
jigsaw_setup "$@"
: "${HOSTFILE:?set HOSTFILE to a deepspeed hostfile (lines: HOST slots=N)}"
launcher=(--hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}")
if [ -n "${NODE_RANK:-}" ]; then
  : "${MASTER_ADDR:?without ssh (NODE_RANK set) MASTER_ADDR must name the first host of the hostfile}"
  launcher+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
elif [ -n "${MASTER_ADDR:-}" ]; then
  launcher+=(--master_addr "$MASTER_ADDR")
fi
# shellcheck disable=SC2086
exec "$JIGSAW_BIN/deepspeed" "${launcher[@]}" ${DS_ARGS:-} "$JIGSAW_BIN/jigsaw-train" "${TRAIN_ARGS[@]}"
