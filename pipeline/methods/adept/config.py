"""ADePT's config, parameter count and rank rule (no torch: ``pipeline validate`` reads it).

Budget: m·d + 2·r·d + r + d ≤ L·d (a d→r→d FFN with both biases beside m prompt vectors).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..base import BudgetError, DecomposedConfig, check_dropout


@dataclass
class ADePTConfig(DecomposedConfig):
    """m prompt vectors + a token-shared FFN (d→r→d, residual) offsetting each input token."""

    method: ClassVar[str] = "adept"
    can_fold: ClassVar[bool] = True
    can_merge: ClassVar[bool] = True

    dropout: float = field(default=0.1, metadata={"help": "Dropout before the FFN's ReLU."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dropout(self.dropout)

    def resolve(self, text_config: Any, max_length: int | None = None) -> ADePTConfig:
        if self.rank is not None:
            return self
        d = text_config.hidden_size
        return replace(self, rank=adept_rank(self.budget_tokens, self.num_virtual_tokens, d))

    def trainable_parameters(self, d: int) -> int:
        return adept_params(self.num_virtual_tokens, self.rank, d)


def adept_params(m: int, r: int, d: int) -> int:
    """ADePT: m·d + 2·r·d + r + d (FFN d→r→d with both biases)."""
    return m * d + 2 * r * d + r + d


def adept_rank(budget_tokens: int, m: int, d: int) -> int:
    """Largest r with m·d + 2rd + r + d ≤ L·d, i.e. r = floor((L − m − 1)·d / (2d + 1))."""
    r = (budget_tokens - m - 1) * d // (2 * d + 1)
    if r < 1:
        raise BudgetError(
            f"ADePT budget L={budget_tokens} with m={m}, d={d} leaves r={r} < 1; "
            "use fewer prompt tokens (m) or a larger budget L"
        )
    return r
