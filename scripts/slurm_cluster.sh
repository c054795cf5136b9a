#!/usr/bin/env bash
# A real single-node Slurm (munge + slurmctld + slurmd from Debian packages) for tests and CI.
#
#   bash scripts/slurm_cluster.sh up      # install if needed, configure, start, wait until idle
#   bash scripts/slurm_cluster.sh down    # stop only the daemons this script started
#   bash scripts/slurm_cluster.sh env     # print the SLURM_CONF export for your shell
#
# Everything lives under $ADEPT_SLURM_DIR (default /tmp/adept-slurm); nothing in /etc/slurm is
# touched, so commands need SLURM_CONF=$ADEPT_SLURM_DIR/slurm.conf (`eval "$(... env)"`).
# Daemons listen on 127.0.0.1 only: the host name resolves there and CommunicationParameters
# binds to that address instead of 0.0.0.0. `down` cancels the jobs first, so no slurmstepd or
# job process outlives the daemons. Idempotent: `up` on a running cluster changes nothing.
# There is no accounting database (sacct cannot work); finished jobs stay in `scontrol show job`
# for an hour (MinJobAge) and every finished job is a line in $dir/jobcomp.log.
set -euo pipefail
dir=${ADEPT_SLURM_DIR:-/tmp/adept-slurm}
conf=$dir/slurm.conf
host=$(hostname -s)

alive() {  # pid file -> running (state Z counts as dead: PID 1 here reaps late)
  [ -f "$1" ] || return 1
  local pid state
  pid=$(cat "$1")
  state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
  [ -n "$state" ] && [[ "$state" != Z* ]]
}

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null \
    && return 0
  local created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # no systemd: keep packages from starting services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

write_config() {
  mkdir -p "$dir/state" "$dir/spool"
  local cpus mem
  cpus=$(nproc)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat > "$conf" <<CONF
ClusterName=adept
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
DependencyParameters=kill_invalid_depend
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
MinJobAge=3600
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  if alive "$dir/munged.pid"; then return 0; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  if ps -C munged -o stat= | grep -qv '^Z'; then  # someone else's munged: use it, never stop it
    return 0
  fi
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/adept-munged.pid \
    --socket=/run/munge/munge.socket.2
  for _ in $(seq 50); do [ -s /run/munge/adept-munged.pid ] && break; sleep 0.1; done
  cp /run/munge/adept-munged.pid "$dir/munged.pid"
}

up() {
  install_packages
  mkdir -p "$dir"
  alive "$dir/slurmctld.pid" || write_config  # never rewrite a running cluster's config
  export SLURM_CONF=$conf
  start_munge
  alive "$dir/slurmctld.pid" || /usr/sbin/slurmctld -f "$conf"
  alive "$dir/slurmd.pid" || /usr/sbin/slurmd -f "$conf"
  for _ in $(seq 120); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
    case "$state" in idle|mixed|allocated) echo "slurm up: $host $state (SLURM_CONF=$conf)"; return 0;; esac
    sleep 0.5
  done
  echo "slurm did not become idle; logs in $dir" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  return 1
}

stop() {  # pid file -> TERM, wait up to 15 s, then KILL: returns once the daemon is gone
  alive "$1" || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 150); do alive "$1" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cancel_jobs() {  # scancel everything, wait for the steps to end; echo the ids it cancelled
  local ids
  ids=$(SLURM_CONF=$conf squeue -h -o %A 2>/dev/null | sort -u || true)
  [ -n "$ids" ] || return 0
  SLURM_CONF=$conf scancel $ids 2>/dev/null || true
  for _ in $(seq 90); do
    [ -z "$(SLURM_CONF=$conf squeue -h -o %A 2>/dev/null || true)" ] && break
    sleep 0.5
  done
  echo "$ids"
}

down() {
  local ids=""
  alive "$dir/slurmctld.pid" && ids=$(cancel_jobs)
  for name in slurmd slurmctld munged; do
    stop "$dir/$name.pid"
    rm -f "$dir/$name.pid"
  done
  # a daemon that never wrote its pid file (stuck starting) is still ours by its config path
  pkill -KILL -f "^/usr/sbin/slurm(ctld|d) -f $conf\$" 2>/dev/null || true
  for id in $ids; do  # a step that outlived the cancel (e.g. stuck in I/O) goes now
    pkill -KILL -f "^slurmstepd: \[$id\." 2>/dev/null || true
  done
  echo "slurm down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
