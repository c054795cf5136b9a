"""Budget rule and parameter counts, from formulas and from real modules."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.methods import (
    ADePT,
    ADePTConfig,
    BudgetError,
    DePT,
    DePTConfig,
    PromptTuning,
    PromptTuningConfig,
    adept_params,
    adept_rank,
    dept_params,
    dept_rank,
)


@pytest.mark.parametrize("m, r", [(20, 39), (40, 29), (60, 19), (80, 9)])
def test_adept_rank_matches_paper_table(m: int, r: int) -> None:
    for d in (640, 768, 4096):
        assert adept_rank(100, m, d) == r


@pytest.mark.parametrize("d, expected", [(768, 76_051), (640, 63_379), (4096, 405_523)])
def test_adept_counts_fit_under_pt_budget(d: int, expected: int) -> None:
    count = adept_params(60, adept_rank(100, 60, d), d)
    assert count == expected
    assert count <= 100 * d
    # one more rank would exceed the budget: r is the largest that fits
    assert adept_params(60, adept_rank(100, 60, d) + 1, d) > 100 * d


def test_pt_and_dept_counts() -> None:
    assert PromptTuningConfig(num_virtual_tokens=100).trainable_parameters(640) == 64_000
    # DePT on T5-base, s=256: m=60 -> r=30 fills the budget exactly
    assert dept_rank(100, 60, 768, 256) == 30
    assert dept_params(60, 30, 256, 768) == 76_800


def test_budget_errors_name_the_cause() -> None:
    with pytest.raises(ValueError, match="num_virtual_tokens=100 must be smaller"):
        ADePTConfig(num_virtual_tokens=100, budget_tokens=100)
    with pytest.raises(BudgetError, match="r=0 < 1"):
        adept_rank(100, 99, 640)
    text_config = LlamaConfig(hidden_size=640, num_attention_heads=4)
    with pytest.raises(BudgetError, match="r=0 < 1"):
        ADePTConfig(num_virtual_tokens=99).resolve(text_config)


def test_each_method_config_solves_its_own_rank() -> None:
    """The rank rule lives in the method's config: resolve() fills r from the budget (DePT's
    table covers the task's input length, 256 when none is given); a given r is kept."""
    text_config = LlamaConfig(hidden_size=768, num_attention_heads=4)
    dept = DePTConfig(num_virtual_tokens=60).resolve(text_config, max_length=256)
    assert (dept.rank, dept.max_length) == (30, 256)
    assert dept.trainable_parameters(768) == dept_params(60, 30, 256, 768) == 76_800
    assert DePTConfig(num_virtual_tokens=60).resolve(text_config).max_length == 256
    # s=128: r = floor((100 − 60) · 768 / (128 + 768)) = floor(34.29) = 34
    assert DePTConfig(num_virtual_tokens=60).resolve(text_config, 128).rank == 34
    assert ADePTConfig(num_virtual_tokens=60, rank=5).resolve(text_config).rank == 5
    assert ADePTConfig(num_virtual_tokens=60).resolve(text_config).rank == 19


def test_llama7b_counts_on_meta_device() -> None:
    """Llama-2-7B dims: counts come from the config alone, no weights materialised."""
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
    )
    with torch.device("meta"):
        base = LlamaForCausalLM(config)
        model = ADePT(base, num_virtual_tokens=60)
    assert model.config.rank == 19
    assert model.num_trainable_parameters() == 405_523 == model.expected_trainable_parameters()
    assert model.prompt.device.type == "meta"


@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_module_counts_equal_formulas(tiny_base, method) -> None:
    model = method(
        tiny_base, num_virtual_tokens=10, **({"max_length": 32} if method is DePT else {})
    )
    assert model.num_trainable_parameters() == model.expected_trainable_parameters()
    if method is not PromptTuning:
        assert model.num_trainable_parameters() <= 100 * model.embedding_dim


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_virtual_tokens must be >= 1"):
        ADePTConfig(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="prompt_init must be"):
        ADePTConfig(prompt_init="zeros")
    with pytest.raises(ValueError, match="needs a non-empty prompt_init_text"):
        ADePTConfig(prompt_init="text")
    with pytest.raises(ValueError, match="dropout"):
        ADePTConfig(dropout=1.0)
