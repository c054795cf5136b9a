"""Process groups: joining the group, small collectives (who this process is: core/ranks.py)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from ..util.deepspeed_import import import_deepspeed
from ..util.ranks import dist_env

# how long a rank waits in a collective before the job fails (model loading on a slow node counts)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def init_process_group() -> None:
    """Join the process group once (gloo on CPU, NCCL on GPU); a no-op for one process."""
    rank, world, local_rank = dist_env()
    if torch.distributed.is_initialized():
        return
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank)})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    deepspeed = import_deepspeed()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, timeout=COLLECTIVE_TIMEOUT, verbose=False
    )


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
