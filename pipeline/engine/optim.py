"""Optimiser and learning-rate schedule of the train stage."""

from __future__ import annotations

import torch

from ..core.config import TrainSection
from ..methods import SoftPromptModel


def build_optimizer(model: SoftPromptModel, train: TrainSection) -> torch.optim.AdamW:
    """AdamW with one group per parameter group of the method (prompt, offset, lora, ...),
    each at its ``train.lr.<group>`` rate."""
    groups = [
        {"params": params, "lr": train.lr[name], "name": name}
        for name, params in model.parameter_groups().items()
    ]
    return torch.optim.AdamW(groups, weight_decay=train.weight_decay)


def linear_warmup_decay(warmup: int, total: int):
    """The factor on each group's lr at a step: 0 → 1 over ``warmup`` steps, then 1 → 0 at
    ``total`` (transformers' ``get_linear_schedule_with_warmup``, whose module pulls in PEFT and
    bitsandbytes: seconds of start-up for one line of arithmetic)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection):
    """Linear warm-up to each group's lr, then linear decay to zero at ``train.steps``."""
    schedule = linear_warmup_decay(train.warmup_steps, train.steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
