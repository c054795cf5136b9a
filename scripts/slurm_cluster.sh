#!/usr/bin/env bash
# A real Slurm (munge + slurmctld + slurmd from Debian packages) for tests, CI and local trials:
# one node (this host), or N nodes on this one machine, each in its own network namespace.
#
#   bash scripts/slurm_cluster.sh up [--nodes N]  # install if needed, configure, start, wait idle
#   bash scripts/slurm_cluster.sh down            # stop what `up` started; leave nothing running
#   bash scripts/slurm_cluster.sh env             # print the SLURM_CONF export for your shell
#   bash scripts/slurm_cluster.sh on NODE CMD...  # run CMD on a node (N > 1): its address, hostname
#
# Several nodes: slurmctld runs on the head node `adept-ctl` (10.87.0.1), node i is `adept-n<i>`
# (10.87.0.<10+i>); each is a network namespace of that name with a veth pair into the bridge
# adept-br0 (this host is 10.87.0.254 there, so sbatch/squeue work from here), its own UTS
# hostname, an /etc/hosts naming every node (/etc/netns/<ns>/hosts mounted there), and on the
# compute nodes 1 CPU and their own slurmd (`slurmd -N adept-n<i>`: spool, pid and log per node).
# munge and the file system are shared, as on a cluster with NFS home directories.
#
# Everything lives under $ADEPT_SLURM_DIR (default /tmp/adept-slurm); nothing in /etc/slurm is
# touched, so commands need SLURM_CONF=$ADEPT_SLURM_DIR/slurm.conf (`eval "$(... env)"`).
# Daemons listen on 127.0.0.1 only: the host name resolves there and CommunicationParameters
# binds to that address instead of 0.0.0.0. `down` cancels the jobs first, so no slurmstepd or
# job process outlives the daemons. Idempotent: `up` on a running cluster changes nothing; `up`
# after a crash starts with no jobs (the old cluster's saved job state is cleared).
# A requeued job may start again after 30 s (AuthInfo cred_expire; Slurm's default is 120 s).
# There is no accounting database (sacct cannot work); finished jobs stay in `scontrol show job`
# for an hour (MinJobAge) and every finished job is a line in $dir/jobcomp.log.
set -euo pipefail
dir=${ADEPT_SLURM_DIR:-/tmp/adept-slurm}
conf=$dir/slurm.conf
host=$(hostname -s)
subnet=10.87.0  # the namespaced cluster's network: controller .1, node i .(10+i), this host .254
bridge=adept-br0

alive() {  # pid file -> running (state Z counts as dead: PID 1 here reaps late)
  [ -f "$1" ] || return 1
  local pid state
  pid=$(cat "$1")
  state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
  [ -n "$state" ] && [[ "$state" != Z* ]]
}

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null \
    && command -v ip >/dev/null && command -v nsenter >/dev/null && return 0
  local created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # no systemd: keep packages from starting services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

node_names() {  # the slurmd node names of the cluster in $dir (one line each)
  if [ "$(cat "$dir/nodes" 2>/dev/null || echo 1)" = 1 ]; then echo "$host"; return; fi
  seq -f "adept-n%g" 1 "$(cat "$dir/nodes")"
}

write_config() {  # $1: number of nodes
  local nodes=$1 cpus mem ctld_host ctld_addr node_lines i
  mkdir -p "$dir/state" "$dir/spool"
  cpus=$(nproc)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  if [ "$nodes" = 1 ]; then
    ctld_host=$host ctld_addr=127.0.0.1
    node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
  else
    ctld_host=adept-ctl ctld_addr=$subnet.1
    node_lines=$(for i in $(seq "$nodes"); do
      echo "NodeName=adept-n$i NodeAddr=$subnet.$((10 + i)) CPUs=1 RealMemory=$((mem / nodes)) State=UNKNOWN"
    done)
  fi
  echo "$nodes" > "$dir/nodes"
  cat > "$conf" <<CONF
ClusterName=adept
SlurmctldHost=$ctld_host($ctld_addr)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=cred_expire=30
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
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
SlurmdTimeout=30
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

network_up() {  # $1: number of nodes (> 1): bridge, namespaces, veth pairs, hosts files
  local nodes=$1 i ns address
  ip link show "$bridge" >/dev/null 2>&1 || {
    ip link add "$bridge" type bridge
    ip addr add "$subnet.254/24" dev "$bridge"  # this host reaches the cluster (sbatch, squeue)
  }
  ip link set "$bridge" up
  for i in 0 $(seq "$nodes"); do  # 0: the controller
    if [ "$i" = 0 ]; then ns=adept-ctl address=$subnet.1; else ns=adept-n$i address=$subnet.$((10 + i)); fi
    mkdir -p "/etc/netns/$ns"
    {
      echo "127.0.0.1 localhost"
      echo "$subnet.1 adept-ctl"
      for j in $(seq "$nodes"); do echo "$subnet.$((10 + j)) adept-n$j"; done
    } > "/etc/netns/$ns/hosts"
    ip netns list | grep -q "^$ns\b" && continue
    ip netns add "$ns"
    ip link add "adept-v$i" type veth peer name eth0 netns "$ns"
    ip link set "adept-v$i" master "$bridge" up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
  done
}

network_down() {  # namespaces, their processes, veth pairs (they go with the namespace), bridge
  local ns pids
  for ns in $(ip netns list | awk '/^adept-(ctl|n[0-9]+)/ {print $1}'); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  ip link delete "$bridge" 2>/dev/null || true
}

on_node() {  # NODE CMD...: run CMD in NODE's network namespace, hostname and /etc/hosts
  local node=$1
  shift
  # not `ip netns exec`: it mounts a fresh /sys, which hides the cgroup tree slurmd needs
  nsenter --net="/run/netns/$node" unshare --mount --uts sh -c '
    mount --bind "/etc/netns/$0/hosts" /etc/hosts && hostname "$0" && exec "$@"' "$node" "$@"
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

start_slurmd() {  # NODE
  local node=$1
  alive "$dir/slurmd-$node.pid" && return 0
  mkdir -p "$dir/spool/$node"
  if [ "$node" = "$host" ]; then
    /usr/sbin/slurmd -f "$conf" -N "$node"
  else
    on_node "$node" /usr/sbin/slurmd -f "$conf" -N "$node"
  fi
}

up() {  # $1: number of nodes
  local nodes=$1 running node states
  install_packages
  mkdir -p "$dir"
  if alive "$dir/slurmctld.pid"; then  # never rewrite a running cluster's config
    running=$(cat "$dir/nodes" 2>/dev/null || echo 1)
    if [ "$running" != "$nodes" ]; then
      echo "a $running-node cluster is running in $dir: run '$0 down' first" >&2
      return 1
    fi
  else
    write_config "$nodes"
  fi
  [ "$nodes" = 1 ] || network_up "$nodes"
  export SLURM_CONF=$conf
  start_munge
  if ! alive "$dir/slurmctld.pid"; then
    # -c: a fresh cluster starts with no jobs; those of one that was never brought down (a crash,
    # a killed test run) would otherwise be recovered and hold the node
    if [ "$nodes" = 1 ]; then /usr/sbin/slurmctld -c -f "$conf"; else on_node adept-ctl /usr/sbin/slurmctld -c -f "$conf"; fi
  fi
  for node in $(node_names); do start_slurmd "$node"; done
  for _ in $(seq 120); do
    states=$(sinfo -h -N -o '%T' 2>/dev/null || true)
    if [ "$(grep -cE '^(idle|mixed|allocated)$' <<< "$states")" = "$nodes" ]; then
      echo "slurm up: $(node_names | tr '\n' ' ')$(sort -u <<< "$states" | tr '\n' ' ')(SLURM_CONF=$conf)"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm did not become idle; logs in $dir" >&2
  tail -n 20 "$dir"/slurm*.log >&2 || true
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
  local ids="" node
  alive "$dir/slurmctld.pid" && ids=$(cancel_jobs)
  for node in $(node_names); do stop "$dir/slurmd-$node.pid"; rm -f "$dir/slurmd-$node.pid"; done
  for name in slurmctld munged; do
    stop "$dir/$name.pid"
    rm -f "$dir/$name.pid"
  done
  # a daemon that never wrote its pid file (stuck starting) is still ours by its config path
  pkill -KILL -f "^/usr/sbin/slurm(ctld|d) -f $conf( |\$)" 2>/dev/null || true
  for id in $ids; do  # a step that outlived the cancel (e.g. stuck in I/O) goes now
    pkill -KILL -f "^slurmstepd: \[$id\." 2>/dev/null || true
  done
  # the namespaces (and whatever still ran inside a node), when this cluster made them
  [ "$(cat "$dir/nodes" 2>/dev/null || echo 1)" = 1 ] || network_down
  echo "slurm down"
}

command=${1:-up}
[ $# -gt 0 ] && shift
case "$command" in
  up)
    nodes=1
    while [ $# -gt 0 ]; do
      case "$1" in
        --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
        --nodes=*) nodes=${1#--nodes=}; shift ;;
        *) echo "usage: $0 up [--nodes N]" >&2; exit 2 ;;
      esac
    done
    [[ "$nodes" =~ ^[1-9][0-9]?$ ]] || { echo "--nodes: expected 1-99, got '$nodes'" >&2; exit 2; }
    up "$nodes"
    ;;
  down) down ;;
  env) echo "export SLURM_CONF=$conf" ;;
  on) [ $# -ge 2 ] || { echo "usage: $0 on NODE CMD..." >&2; exit 2; }; on_node "$@" ;;
  *) echo "usage: $0 up [--nodes N]|down|env|on NODE CMD..." >&2; exit 2 ;;
esac
