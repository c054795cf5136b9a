"""Who this process is among the ranks of a launch, read from the environment (no torch), and
how a rank ends its process."""

from __future__ import annotations

import logging
import os
import sys


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's or Slurm's environment."""
    if "WORLD_SIZE" in os.environ:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    if "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1:
        return (
            int(os.environ["SLURM_PROCID"]),
            int(os.environ["SLURM_NTASKS"]),
            int(os.environ.get("SLURM_LOCALID", 0)),
        )
    return 0, 1, 0


def is_distributed_launch() -> bool:
    return dist_env()[1] > 1


def exit_process(code: int) -> None:
    """End this process with ``code``. A rank of a process group leaves the group and skips the
    interpreter's teardown (``os._exit`` after flushing logs and stdio): C++ destructors racing
    gloo's threads there abort a rank (SIGABRT, 'terminate called without an active exception')
    now and then after all its work is done, and torchrun then reports the stage failed."""
    torch = sys.modules.get("torch")  # never imported: no process group to leave
    distributed = getattr(torch, "distributed", None)
    if distributed is None or not (distributed.is_available() and distributed.is_initialized()):
        sys.exit(code)
    distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
