"""DeepSpeed told which accelerator it runs on, so machines without a GPU get no start-up warning
from it (it is imported by us for ZeRO, and by accelerate inside transformers' save_pretrained)."""

from __future__ import annotations

import os
from typing import Any


def name_deepspeed_accelerator() -> None:
    """``DS_ACCELERATOR=cpu`` where torch sees no CUDA device (a value the user set wins):
    DeepSpeed then takes the CPU as told instead of warning "Setting accelerator to CPU" at
    every import, in every rank."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def import_deepspeed() -> Any:
    """The ``deepspeed`` module, its accelerator named first."""
    name_deepspeed_accelerator()
    import deepspeed

    return deepspeed
