#!/usr/bin/env bash
# ADePT training as a Slurm array job: task i runs variant i of the config's `sweep:` grid
# (`pipeline sweep CONFIG` lists them and prints the --array range).
#
#   mkdir -p logs && sbatch --array=0-7 --output='logs/%x_%A_%a.out' slurm/train_llama.sh CONFIG
#   mkdir -p logs && sbatch -N 2 --gpus-per-node=8 -p gpu -A myproj slurm/train_llama.sh CONFIG
#   pipeline submit CONFIG     # tokenize once -> this array (afterok) -> evaluate/export
#   (try two nodes on one machine: bash scripts/slurm_cluster.sh up --nodes 2; sbatch -N 2 ...)
#
# Nodes, GPUs, partition and account come from sbatch flags or SBATCH_* variables, never from
# this file. The task itself is pipeline/launch/slurm.py (run_task): ranks from the allocation
# (NPROC_PER_NODE, else SLURM_GPUS_ON_NODE, else 1 per node; several nodes: srun starts one
# torchrun per node, rendezvous at the first host). Preemption: Slurm sends USR1 120 s before the
# time limit (`scontrol requeue` sends TERM); the ranks checkpoint and stop, the task requeues
# itself and resumes from the checkpoint. Environment: PYTHON (default python) with the project
# installed; STAGES (default all five). Logs: logs/<job name>_<job id>.out (Slurm opens it before
# this script runs, so logs/ must exist); array commands add --output='logs/%x_%A_%a.out'.
#SBATCH --job-name=adept-train
#SBATCH --output=logs/%x_%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
exec "${PYTHON:-python}" -m pipeline.launch.slurm "$@"
