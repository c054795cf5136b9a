"""DePT: m prompt vectors plus a position-indexed low-rank offset e_i' = e_i + scale·(A B)_i.

Position i is the index of the token among the *real* tokens of its row (0 for the first
non-padding token), so the offset does not depend on the padding side. For right padding it is
exactly the authors' padded position. Rows longer than ``max_length`` (s) are an error: the table
has no row for them. Budget: m·d + r·(s + d) ≤ L·d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from .base import BudgetError, DecomposedConfig
from .registry import register_method
from .wrapper import SoftPromptModel

DEFAULT_MAX_LENGTH = 256  # s when neither the config nor the caller gives an input length


@dataclass
class DePTConfig(DecomposedConfig):
    """m prompt vectors + A (s×r) B (r×d) offset rows indexed by token position."""

    method: ClassVar[str] = "dept"
    why_not_mergeable: ClassVar[str] = (
        "DePT's low-rank offsets depend on each token's position, not its id, so no embedding "
        "table holds them; serve the adapter, or give vLLM prompt embeddings "
        "(--enable-prompt-embeds)"
    )

    max_length: int | None = field(
        default=None,
        metadata={"help": "s: input length the offset table covers; null: task.max_length."},
    )
    alpha: float = field(default=8.0, metadata={"help": "Offset scale is alpha / sqrt(rank)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    def resolve(self, text_config: Any, max_length: int | None = None) -> DePTConfig:
        s = self.max_length or max_length or DEFAULT_MAX_LENGTH
        d = text_config.hidden_size
        rank = self.rank or dept_rank(self.budget_tokens, self.num_virtual_tokens, d, s)
        return replace(self, max_length=s, rank=rank)

    def trainable_parameters(self, d: int) -> int:
        return dept_params(self.num_virtual_tokens, self.rank, self.max_length, d)


def dept_params(m: int, r: int, s: int, d: int) -> int:
    """DePT: m·d + r·(s + d)."""
    return m * d + r * (s + d)


def dept_rank(budget_tokens: int, m: int, d: int, s: int) -> int:
    """Largest r with m·d + r(s+d) ≤ L·d."""
    r = (budget_tokens - m) * d // (s + d)
    if r < 1:
        raise BudgetError(
            f"DePT budget L={budget_tokens} with m={m}, s={s}, d={d} leaves r={r} < 1; "
            "use fewer prompt tokens (m) or a larger budget L"
        )
    return r


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

    @classmethod
    def build_offset(cls, config: DePTConfig, d: int) -> nn.Module:
        return PositionLowRankOffset(config, d)


register_method(DePTConfig, DePT, label="DePT")
