#!/usr/bin/env bash
# A one-machine SLURM cluster on loopback: to try launch/slurm/jigsaw.sbatch without a cluster (and for
# tests/test_slurm.py). Needs root (slurmd starts jobs) and, if SLURM is missing, Debian's apt-get.
#
#   launch/slurm/local_cluster.sh up DIR      # install slurmctld, slurmd, slurm-client, munge if missing;
#                                             # start munged, slurmctld and slurmd, all state under DIR
#   export SLURM_CONF=DIR/slurm.conf          # then: sbatch, squeue, scontrol show job ID
#   launch/slurm/local_cluster.sh down DIR    # cancel jobs, stop the daemons
#
# The cluster: one node (this machine's short host name, address 127.0.0.1) with CPUS CPUs (default 4;
# may exceed the real count: SlurmdParameters=config_overrides) in partition "local"; its own munge key
# and socket under DIR; no cgroups (proctrack/linuxproc, task/none); no accounting database: job states
# from `scontrol show job` (kept MinJobAge=600 s) and DIR/log/jobcomp.txt. Ports SLURMCTLD_PORT (6817)
# and SLURMD_PORT (6818). Exit status 3: SLURM cannot be installed or started here (the reason on stderr).
set -euo pipefail
cmd=${1:?usage: local_cluster.sh up|down DIR}
dir=${2:?usage: local_cluster.sh up|down DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export SLURM_CONF=$dir/slurm.conf
host=$(hostname -s)

unavailable() { echo "local_cluster.sh: SLURM unavailable: $*" >&2; exit 3; }

install_slurm() {  # Debian packages, without starting their services
  local pkgs=(slurmctld slurmd slurm-client munge)
  command -v apt-get >/dev/null || unavailable "slurmctld/slurmd/munged are not installed and there is no apt-get"
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1; fi
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=60 install --no-install-recommends "${pkgs[@]}")
  export DEBIAN_FRONTEND=noninteractive
  timeout 150 "${apt[@]}" >"$dir/apt.log" 2>&1 ||
    { timeout 120 apt-get -q update >>"$dir/apt.log" 2>&1 && timeout 150 "${apt[@]}" >>"$dir/apt.log" 2>&1; } ||
    { [ -z "$made_policy" ] || rm -f "$policy"; unavailable "apt-get install ${pkgs[*]} failed: $(tail -n 2 "$dir/apt.log")"; }
  [ -z "$made_policy" ] || rm -f "$policy"
}

write_conf() {
  cat >"$SLURM_CONF" <<EOF
ClusterName=jigsawlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=${CPUS:-4} RealMemory=1000 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

stop_pid() {  # stop daemon $2 whose pid file is $1, if it runs (and that pid is still that daemon)
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  if [ -f "$SLURM_CONF" ] && command -v squeue >/dev/null; then
    timeout 10 squeue -h -o %i 2>/dev/null | xargs -r timeout 10 scancel 2>/dev/null || true
  fi
  stop_pid "$dir/slurmd.pid" slurmd
  stop_pid "$dir/slurmctld.pid" slurmctld
  stop_pid "$dir/munge/munged.pid" munged
}

fail() {  # a daemon did not come up: show why
  echo "local_cluster.sh: $*" >&2
  tail -n 15 "$dir"/log/*.log "$dir"/munge/munged.log >&2 2>/dev/null || true
  down
  exit 1
}

up() {
  [ "$(id -u)" = 0 ] || unavailable "not root (slurmd must run as root to start jobs)"
  local tool
  for tool in slurmctld slurmd sbatch munged mungekey; do
    command -v "$tool" >/dev/null || { install_slurm; break; }
  done
  down  # a cluster left over in the same DIR
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  chmod 711 "$dir/munge"
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" ||
    fail "munged did not start"
  munge -n -S "$dir/munge/munge.socket" | unmunge -S "$dir/munge/munge.socket" >/dev/null || fail "munge does not work"
  write_conf
  slurmctld || fail "slurmctld did not start"
  slurmd || fail "slurmd did not start"
  for _ in $(seq 120); do  # up to 30 s for the node to register
    [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ] && { echo "local SLURM cluster up: SLURM_CONF=$SLURM_CONF"; return; }
    sleep 0.25
  done
  fail "node $host did not become idle: $(sinfo -h -o '%T %E' 2>&1)"
}

case $cmd in
  up) up ;;
  down) down ;;
  *) echo "usage: local_cluster.sh up|down DIR" >&2; exit 2 ;;
esac
