"""Slurm: the array task behind ``slurm/train_llama.sh``, ``pipeline submit`` (tokenize
once, training as an array with one task per sweep variant that depends on it, then
evaluate/export as an array that runs only if every training task succeeded), and what srun's
stderr says about which node failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..core.config import load_config, sweep_variants
from .commands import SLURM_TASK_VARIANT, pipeline_command, shell_join
from .signals import EXIT_PREEMPTED, STOP_SIGNALS, run_forwarding_signals

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "slurm" / "train_llama.sh"
BATCH_TASK_VARIABLES = ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_PROCID", "SLURM_LOCALID")
PORT_BASE = 20000  # rendezvous port: PORT_BASE + job id mod PORT_BASE, unless MASTER_PORT is set


class SlurmError(RuntimeError):
    """Slurm is missing or refused a job; the message says which command failed."""


class NodeFailures:
    """Reads srun's stderr while a multi-node stage runs and names the node that failed:
    one Slurm declared failed ("Node failure on X"), else the first whose task exited badly."""

    TASK = re.compile(r"^srun: error: (\S+): tasks? ([\d\-,]+): (.+)$")
    NODE = re.compile(r"^srun: error: Node failure on (\S+)")

    def __init__(self) -> None:
        self.node_failure: str | None = None
        self.tasks: list[tuple[str, str, str]] = []  # (node, task, what), in the order seen

    def __call__(self, line: str) -> None:
        if node := self.NODE.match(line.strip()):
            self.node_failure = self.node_failure or node.group(1)
        elif task := self.TASK.match(line.strip()):
            self.tasks.append(task.groups())

    def summary(self) -> str:
        """``" on node X (…)"`` or ``""`` when srun named no node."""
        if self.node_failure:
            return f" on node {self.node_failure} (Slurm: node failure)"
        if self.tasks:
            node, task, what = self.tasks[0]
            return f" on node {node} (first failure: task {task}: {what})"
        return ""


def variant_table(config_path: str, overrides: list[str]) -> list[tuple[int, list[str], Path]]:
    """(index, overrides, run dir) per variant; every variant is validated."""
    base = load_config(config_path, overrides)
    rows = []
    for index, variant_overrides in enumerate(sweep_variants(base.sweep)):
        config = load_config(config_path, overrides, variant=index)
        rows.append((index, variant_overrides, config.run_dir))
    return rows


def sbatch(args: list[str], env: dict[str, str] | None = None) -> str:
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "pipeline submit needs Slurm: sbatch is not on PATH "
            "(bash scripts/slurm_cluster.sh up starts a local one)"
        )
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def submit(
    config_path: str,
    overrides: list[str],
    sbatch_args: list[str],
    max_parallel: int | None = None,
) -> dict[str, str]:
    """Submit tokenize → training array (afterok) → evaluate/export array (afterok)."""
    rows = variant_table(config_path, overrides)
    config = load_config(config_path, overrides)
    logs = config.sweep_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config_file = str(Path(config_path).resolve())
    common = [f"--chdir={Path.cwd()}", *sbatch_args]
    array = f"0-{len(rows) - 1}" + (f"%{max_parallel}" if max_parallel else "")

    tokenize = pipeline_command(config_file, variant=0, stages=["tokenize"], overrides=overrides)
    prep = sbatch(
        [
            *common,
            f"--job-name={config.name}-tokenize",
            f"--output={logs}/%x_%j.out",
            f"--wrap={shell_join(tokenize)}",
        ]
    )
    # the training job inherits STAGES and PYTHON from sbatch's environment (a comma-separated
    # --export list would split STAGES)
    train = sbatch(
        [
            *common,
            f"--job-name={config.name}-train",
            f"--array={array}",
            f"--output={logs}/%x_%A_%a.out",
            f"--dependency=afterok:{prep}",
            str(TRAIN_SCRIPT),
            config_file,
            *[arg for o in overrides for arg in ("--set", o)],
        ],
        env={"STAGES": "shard,train", "PYTHON": sys.executable},
    )
    evaluate = pipeline_command(
        config_file, variant=SLURM_TASK_VARIANT, stages=["evaluate", "export"], overrides=overrides
    )
    evaluate_job = sbatch(
        [
            *common,
            f"--job-name={config.name}-evaluate",
            f"--array={array}",
            f"--output={logs}/%x_%A_%a.out",
            f"--dependency=afterok:{train}",
            f"--wrap={shell_join(evaluate)}",
        ]
    )
    return {"tokenize": prep, "train": train, "evaluate": evaluate_job}


def rendezvous_env() -> dict[str, str]:
    """MASTER_ADDR (first host of the allocation) and MASTER_PORT for a multi-node stage."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    hosts = []
    if nodelist and shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
        )
        hosts = out.stdout.split()
    port = os.environ.get("MASTER_PORT") or str(
        PORT_BASE + int(os.environ.get("SLURM_JOB_ID", "0")) % PORT_BASE
    )
    return {"MASTER_ADDR": hosts[0] if hosts else "127.0.0.1", "MASTER_PORT": port}


def task_id() -> str:
    """This task's own id: ``<array job>_<index>`` for array tasks (the plain job id is shared
    by every task of the array), else the job id."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "local")


def run_task(argv: list[str]) -> int:
    """One Slurm task: variant ``$SLURM_ARRAY_TASK_ID`` of CONFIG (``argv``: CONFIG [--set …]),
    the stages in ``$STAGES`` (default all), ranks from the allocation. A signal (USR1 before
    the time limit, TERM on ``scontrol requeue``) makes the ranks checkpoint; the task then
    requeues itself and a restart resumes from the checkpoint."""
    if not argv:
        print("usage: sbatch [--array=0-N] slurm/train_llama.sh CONFIG [--set KEY=VALUE ...]")
        return 2
    config, extra = argv[0], argv[1:]
    env = os.environ
    nnodes = int(env.get("SLURM_NNODES", "1"))
    nproc = int(env.get("NPROC_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "1")
    stages = [s for s in env.get("STAGES", "").split(",") if s]
    rendezvous = rendezvous_env()
    command = pipeline_command(
        config,
        stages=stages,
        variant=env.get("SLURM_ARRAY_TASK_ID", "0"),
        overrides=[f"distributed.nnodes={nnodes}", f"distributed.nproc_per_node={nproc}"],
        python=env.get("PYTHON"),
    )
    command += extra  # the --set overrides given to the script, verbatim
    print(
        f"{time.strftime('%T')} task {task_id()}: {nnodes} node(s) x {nproc} rank(s), "
        f"rendezvous {rendezvous['MASTER_ADDR']}:{rendezvous['MASTER_PORT']}, "
        f"restart {env.get('SLURM_RESTART_COUNT', 0)}",
        flush=True,
    )
    # the batch script is one process, not rank 0 of SLURM_NTASKS (sbatch -N 2 --ntasks-per-node=1
    # sets those): the ranks are started by the runner, through srun, with their own
    child_env = {k: v for k, v in env.items() if k not in BATCH_TASK_VARIABLES}
    child_env.update(rendezvous, OMP_WAIT_POLICY=env.get("OMP_WAIT_POLICY", "PASSIVE"))
    # the pipeline gets the signal as sent (with several ranks its runner relays it to torchrun)
    as_sent = {sig: sig for sig in STOP_SIGNALS}
    rc, signalled = run_forwarding_signals(command, child_env, forward_as=as_sent)
    if signalled and "SLURM_JOB_ID" in env:
        stopped = "checkpoint written" if rc == EXIT_PREEMPTED else "stopped before a checkpoint"
        print(f"{time.strftime('%T')} {stopped} (exit {rc}); requeueing {task_id()}")
        subprocess.run(["scontrol", "requeue", task_id()], capture_output=True)
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(run_task(sys.argv[1:]))
