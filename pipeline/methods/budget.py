"""Trainable-parameter counts and the budget rule that matches vanilla prompt tuning.

Everything here is arithmetic on integers: counts can be planned from a model config alone,
without materialising any weights (e.g. Llama-2-7B, d=4096).
"""

from __future__ import annotations

from typing import Any

from .config import ADePTConfig, DePTConfig, LoRAConfig, PromptTuningConfig, SoftPromptConfig


class BudgetError(ValueError):
    """The requested prompt length leaves no room for the low-rank/FFN part."""


def prompt_tuning_params(length: int, d: int) -> int:
    """Vanilla PT: L·d."""
    return length * d


def dept_params(m: int, r: int, s: int, d: int) -> int:
    """DePT: m·d + r·(s + d)."""
    return m * d + r * (s + d)


def adept_params(m: int, r: int, d: int) -> int:
    """ADePT: m·d + 2·r·d + r + d (FFN d→r→d with both biases)."""
    return m * d + 2 * r * d + r + d


def dept_rank(budget_tokens: int, m: int, d: int, s: int) -> int:
    """Largest r with m·d + r(s+d) ≤ L·d."""
    r = (budget_tokens - m) * d // (s + d)
    if r < 1:
        raise BudgetError(
            f"DePT budget L={budget_tokens} with m={m}, s={s}, d={d} leaves r={r} < 1; "
            "use fewer prompt tokens (m) or a larger budget L"
        )
    return r


def adept_rank(budget_tokens: int, m: int, d: int) -> int:
    """Largest r with m·d + 2rd + r + d ≤ L·d, i.e. r = floor((L − m − 1)·d / (2d + 1))."""
    r = (budget_tokens - m - 1) * d // (2 * d + 1)
    if r < 1:
        raise BudgetError(
            f"ADePT budget L={budget_tokens} with m={m}, d={d} leaves r={r} < 1; "
            "use fewer prompt tokens (m) or a larger budget L"
        )
    return r


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


def trainable_params(config: SoftPromptConfig, d: int) -> int:
    """Trainable parameter count of ``config`` on a model with embedding width ``d``."""
    m = config.num_virtual_tokens
    if isinstance(config, ADePTConfig):
        return adept_params(m, config.rank, d)
    if isinstance(config, DePTConfig):
        return dept_params(m, config.rank, config.max_length, d)
    if isinstance(config, PromptTuningConfig):
        return prompt_tuning_params(m, d)
    if isinstance(config, LoRAConfig):
        if config.params_per_rank is None:
            raise ValueError("LoRAConfig.params_per_rank is unset: build it from the model")
        return config.rank * config.params_per_rank
    raise TypeError(f"unknown method config {type(config).__name__}")


def solve_rank(method: str, budget_tokens: int, m: int, d: int, s: int | None = None) -> int:
    """The rank that fills the PT-``budget_tokens`` budget for ``method`` (0 for PT)."""
    if m >= budget_tokens and method != "prompt_tuning":
        raise BudgetError(f"m={m} must be smaller than the budget L={budget_tokens}")
    if method == "adept":
        return adept_rank(budget_tokens, m, d)
    if method == "dept":
        if s is None:
            raise BudgetError("DePT's budget needs the padded input length s (max_length)")
        return dept_rank(budget_tokens, m, d, s)
    if method == "prompt_tuning":
        return 0
    raise BudgetError(f"unknown method {method!r}")
