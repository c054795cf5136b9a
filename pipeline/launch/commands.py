"""Every command line and environment the pipeline starts itself with.

One ``pipeline run`` (:func:`pipeline_command`) is the unit everywhere: the runner starts a
distributed stage under torchrun (:func:`distributed_stage_command`), the Slurm task and
``pipeline submit`` run it in jobs, and the comparison study runs one per job.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ..util.cpus import thread_count

SLURM_TASK_VARIANT = "$SLURM_ARRAY_TASK_ID"  # expanded by the job's shell, never quoted


class LaunchError(RuntimeError):
    """A stage cannot be launched the way the config asks; says what to do instead."""


def pipeline_command(
    config: str | Path,
    *,
    stages: Sequence[str] | None = None,
    variant: int | str | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    python: str | None = None,
) -> list[str]:
    """``python -m pipeline.cli run CONFIG [--variant i] [--stages a,b] [--set k=v]… [--force]``."""
    command = [python or sys.executable, "-m", "pipeline.cli", "run", str(config)]
    if variant is not None:
        command += ["--variant", str(variant)]
    if stages:
        command += ["--stages", ",".join(stages)]
    for item in overrides:
        command += ["--set", item]
    return command + (["--force"] if force else [])


def shell_join(command: Sequence[str]) -> str:
    """One shell line; :data:`SLURM_TASK_VARIANT` stays unquoted so the job's shell expands it."""
    return " ".join(a if a == SLURM_TASK_VARIANT else shlex.quote(a) for a in command)


def torchrun_command(
    inner: Sequence[str], nproc_per_node: int, nnodes: int = 1, rendezvous: str | None = None
) -> list[str]:
    """torchrun over ``inner`` (a ``python -m module …`` command): ``--standalone`` on one node,
    a c10d rendezvous at ``rendezvous`` (host:port) across nodes."""
    python, module_flag, *rest = inner
    assert module_flag == "-m", inner
    topology = (
        ["--standalone"]
        if nnodes == 1
        else ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rendezvous]
    )
    return [python, "-m", "torch.distributed.run", *topology,
            f"--nproc_per_node={nproc_per_node}", "-m", *rest]  # fmt: skip


def distributed_stage_command(
    config: Path, stage: str, nproc_per_node: int, nnodes: int, force: bool
) -> list[str]:
    """The command that runs ``stage`` of ``config`` on every rank: torchrun on this node, or
    inside a Slurm allocation of several nodes one torchrun per node through ``srun``,
    rendezvous at ``MASTER_ADDR:MASTER_PORT`` (set by the Slurm task)."""
    inner = pipeline_command(config, stages=[stage], force=force)
    if nnodes == 1:
        return torchrun_command(inner, nproc_per_node)
    if "SLURM_JOB_ID" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise LaunchError(
            f"distributed.nnodes={nnodes}: run it as a Slurm job (sbatch -N {nnodes} "
            "slurm/train_llama.sh CONFIG) or start torchrun on every node yourself"
        )
    rendezvous = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}"
    srun = ["srun", f"--nodes={nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    return srun + torchrun_command(inner, nproc_per_node, nnodes, rendezvous)


def threads_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a job limited to ``threads`` CPU threads."""
    return {
        **(base or os.environ),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def rank_env(nproc_per_node: int) -> dict[str, str]:
    """Environment of ranks started by the runner: the run lock is the runner's; the CPUs this
    process owns (core/cpus.py) are split between the ranks unless OMP_NUM_THREADS says
    otherwise."""
    threads, _ = thread_count(nproc_per_node)
    return {**os.environ, "PIPELINE_LOCK_HELD": "1", "OMP_NUM_THREADS": str(threads)}
