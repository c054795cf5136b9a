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


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection):
    """Linear warm-up to each group's lr, then linear decay to zero at ``train.steps``."""
    from transformers import get_linear_schedule_with_warmup  # heavy import: only when training

    return get_linear_schedule_with_warmup(optimizer, train.warmup_steps, train.steps)
