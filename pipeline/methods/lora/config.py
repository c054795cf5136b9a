"""LoRA's config, parameter count and rank rule (no torch: ``pipeline validate`` reads it).

The rank is the one whose r·Σ(in + out) over the targeted projections is closest to the PT
budget (Gemma 3 270M, q/v: r=1, 46,080 vs PT-100's 64,000).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..base import DERIVED, BudgetError, MethodConfig, check_dropout, check_rank


@dataclass
class LoRAConfig(MethodConfig):
    """B (out×r) A (r×in) updates on the named projections of every layer."""

    method: ClassVar[str] = "lora"
    learning_rates: ClassVar[dict[str, float]] = {"lora": 1e-4}
    lives_in_base: ClassVar[bool] = True
    can_merge: ClassVar[bool] = True  # the updates go into the projections' weights
    renamed_options: ClassVar[dict[str, str]] = {"lora_targets": "target_modules"}

    budget_tokens: int = field(
        default=100, metadata={"help": "L: the rank is the one closest to L·d parameters."}
    )
    rank: int | None = field(
        default=None, metadata={"help": "r of each update; null: closest to the budget."}
    )
    alpha: float = field(default=8.0, metadata={"help": "Update scale is alpha / rank."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "v_proj"), metadata={"help": "Projection names that get an update."}
    )
    params_per_rank: int | None = field(
        default=None,
        metadata={"help": "Σ (in + out) over the targeted layers; from the model.", **DERIVED},
    )

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        check_rank(self.rank)
        check_dropout(self.dropout)
        if not self.target_modules:
            raise ValueError("target_modules must name at least one projection")

    def resolve(self, text_config: Any, max_length: int | None = None) -> LoRAConfig:
        per_rank = lora_params_per_rank(text_config, self.target_modules)
        if self.params_per_rank not in (None, per_rank):
            raise ValueError(
                f"LoRA config says {self.params_per_rank} parameters per rank, "
                f"this base has {per_rank}"
            )
        rank = self.rank or lora_rank(self.budget_tokens, text_config.hidden_size, per_rank)
        return replace(self, rank=rank, params_per_rank=per_rank)

    def trainable_parameters(self, d: int) -> int:
        if self.params_per_rank is None:
            raise ValueError("LoRAConfig.params_per_rank is unset: resolve() it on the model")
        return self.rank * self.params_per_rank


def lora_params_per_rank(text_config: Any, target_modules: tuple[str, ...]) -> int:
    """Σ (in + out) over the targeted attention projections of every layer (LoRA adds r·(in+out)
    per projection), from a transformers text config alone."""
    d = text_config.hidden_size
    head_dim = getattr(text_config, "head_dim", None) or d // text_config.num_attention_heads
    q = text_config.num_attention_heads * head_dim
    kv = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    kv *= head_dim
    widths = {"q_proj": d + q, "k_proj": d + kv, "v_proj": d + kv, "o_proj": q + d}
    unknown = sorted(set(target_modules) - set(widths))
    if unknown:
        raise BudgetError(f"LoRA target_modules {unknown} unknown; plannable: {sorted(widths)}")
    return text_config.num_hidden_layers * sum(widths[name] for name in target_modules)


def lora_rank(budget_tokens: int, d: int, params_per_rank: int) -> int:
    """The rank (≥ 1) whose r·params_per_rank is closest to the PT budget L·d."""
    return max(1, round(budget_tokens * d / params_per_rank))
