#!/usr/bin/env bash
# ADePT training as a Slurm array job: task i runs variant i of the config's `sweep:` grid
# (`pipeline sweep CONFIG` lists them and prints the --array range).
#
#   mkdir -p logs && sbatch --array=0-7 slurm/train_llama.sh configs/llama7b_boolq.yaml
#   sbatch --array=0-7%2 -N 2 --gpus-per-node=8 -p gpu -A myproj slurm/train_llama.sh CONFIG
#   pipeline submit CONFIG     # tokenize once -> this array (afterok) -> evaluate/export
#
# Nodes, GPUs, partition and account come from sbatch flags or SBATCH_* variables, never from
# this file. More than one rank: srun starts one torchrun per node, rendezvous at the first host
# of `scontrol show hostnames`; the config's distributed.{nnodes,nproc_per_node} are set from the
# allocation (NPROC_PER_NODE, else SLURM_GPUS_ON_NODE, else 1).
# Preemption: Slurm sends USR1 to this script 120 s before the time limit; the ranks checkpoint
# and stop, and the task requeues itself. `scontrol requeue` sends TERM, with the same effect.
# A requeued task resumes from its checkpoint. Environment: PYTHON (default python) with the
# project installed; STAGES (default all five).
#SBATCH --job-name=adept-train
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -uo pipefail
config=${1:?usage: sbatch --array=0-N slurm/train_llama.sh CONFIG [--set KEY=VALUE ...]}
shift
python=${PYTHON:-python}
variant=${SLURM_ARRAY_TASK_ID:-0}
stages=${STAGES:-tokenize,shard,train,evaluate,export}
nnodes=${SLURM_NNODES:-1}
nproc=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
mapfile -t hosts < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname -s)}")
export MASTER_ADDR=${hosts[0]:-127.0.0.1}
export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
run=("$python" -m pipeline.cli run "$config" --variant "$variant"
     --set "distributed.nnodes=$nnodes" --set "distributed.nproc_per_node=$nproc" "$@")
echo "$(date +%T) task $variant of job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}:" \
     "$nnodes node(s) x $nproc rank(s), rendezvous $MASTER_ADDR:$MASTER_PORT," \
     "restart ${SLURM_RESTART_COUNT:-0}"

child="" signalled=0
forward() {  # $1: the signal received, $2: the signal the child should get
  signalled=1
  echo "$(date +%T) received $1: asking the pipeline to checkpoint and stop"
  [ -n "$child" ] && kill -s "$2" "$child" 2>/dev/null
}
run_child() {  # run "$@" in the background and wait through trapped signals
  "$@" &
  child=$!
  local rc
  while true; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break  # still running: wait was cut by a trapped signal
  done
  child=""
  return "$rc"
}
select_stages() {  # the requested stages among "$@", comma-joined
  local out=() s
  for s in "$@"; do [[ ",$stages," == *",$s,"* ]] && out+=("$s"); done
  (IFS=,; echo "${out[*]}")
}

rc=0
if [ $((nnodes * nproc)) -gt 1 ]; then
  trap 'forward USR1 TERM' USR1   # torchrun turns TERM into a graceful stop of its workers
  trap 'forward TERM TERM' TERM
  pre=$(select_stages tokenize shard) post=$(select_stages evaluate export)
  [ -n "$pre" ] && { run_child "${run[@]}" --stages "$pre" || rc=$?; }
  if [ "$rc" = 0 ] && [ -n "$(select_stages train)" ]; then
    run_child srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
      "$python" -m torch.distributed.run --nnodes "$nnodes" --nproc_per_node "$nproc" \
      --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
      -m pipeline.cli run "$config" --variant "$variant" --stages train \
      --set "distributed.nnodes=$nnodes" --set "distributed.nproc_per_node=$nproc" "$@" || rc=$?
  fi
  [ "$rc" = 0 ] && [ -n "$post" ] && [ "$signalled" = 0 ] && { run_child "${run[@]}" --stages "$post" || rc=$?; }
else
  trap 'forward USR1 USR1' USR1
  trap 'forward TERM TERM' TERM
  run_child "${run[@]}" --stages "$stages" || rc=$?
fi

if [ "$signalled" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "$(date +%T) checkpoint written (exit $rc); requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" 2>/dev/null || true  # already requeueing when Slurm asked
  exit 0
fi
exit "$rc"
