"""DePT: m prompt vectors plus a position-indexed low-rank offset e_i' = e_i + scale·(A B)_i.

Position i is the index of the token among the *real* tokens of its row (0 for the first
non-padding token), so the offset does not depend on the padding side. For right padding it is
exactly the authors' padded position. Rows longer than ``max_length`` (s) are an error: the table
has no row for them. Budget and rank rule: :mod:`.config`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..wrapper import SoftPromptModel
from .config import DePTConfig


class PositionLowRankOffset(nn.Module):
    """A (s×r) kaiming-uniform, B (r×d) zero: the offset is exactly zero at init."""

    def __init__(self, config: DePTConfig, d: int) -> None:
        super().__init__()
        self.max_length = config.max_length
        self.scale = config.alpha / math.sqrt(config.rank)
        self.lora_a = nn.Parameter(torch.empty(config.max_length, config.rank))
        self.lora_b = nn.Parameter(torch.zeros(config.rank, d))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        longest = int(positions.max()) + 1 if positions.numel() else 0
        if longest > self.max_length:
            raise ValueError(
                f"DePT input has {longest} tokens but the offset table covers max_length="
                f"{self.max_length}; raise method.max_length or truncate the input"
            )
        rows = self.lora_a[positions.clamp(min=0)]  # (B, n, r)
        offset = (rows @ self.lora_b) * self.scale
        return embeds + offset.to(embeds.dtype)


class DePT(SoftPromptModel):
    """DePT; rank from the PT budget unless given: ``DePT(base, num_virtual_tokens=60)``."""

    config_class = DePTConfig

    @classmethod
    def build_offset(cls, config: DePTConfig, d: int) -> nn.Module:
        return PositionLowRankOffset(config, d)
