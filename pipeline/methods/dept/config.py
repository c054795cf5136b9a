"""DePT's config, parameter count and rank rule (no torch: ``pipeline validate`` reads it).

Budget: m·d + r·(s + d) ≤ L·d, s being the input length the position table covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..base import BudgetError, DecomposedConfig

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
