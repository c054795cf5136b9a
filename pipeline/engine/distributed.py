"""Ranks and process groups: who this process is, joining the group, small collectives."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta

import torch

# how long a rank waits in a collective before the job fails (model loading on a slow node counts)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


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


def init_process_group() -> None:
    """Join the process group once (gloo on CPU, NCCL on GPU); a no-op for one process."""
    rank, world, local_rank = dist_env()
    if torch.distributed.is_initialized():
        return
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank)})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, timeout=COLLECTIVE_TIMEOUT, verbose=False
    )


def exit_process(code: int) -> None:
    """End this process with ``code``. A rank of a process group leaves the group and skips the
    interpreter's teardown (``os._exit`` after flushing logs and stdio): C++ destructors racing
    gloo's threads there abort a rank (SIGABRT, 'terminate called without an active exception')
    now and then after all its work is done, and torchrun then reports the stage failed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        sys.exit(code)
    torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def collective_device() -> torch.device:
    """Where small collective tensors must live: NCCL reduces CUDA tensors only."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: float) -> float:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=collective_device())
    torch.distributed.all_reduce(tensor)
    return float(tensor) / torch.distributed.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says True (e.g. a signal arrived on one of them)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    tensor = torch.tensor([int(flag)], device=collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())
