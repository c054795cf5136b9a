"""Soft-prompt methods for frozen causal LMs: vanilla PT, DePT and ADePT (+ the LoRA baseline).

Usable without the pipeline::

    from pipeline.methods import ADePT
    model = ADePT(base_model, num_virtual_tokens=60)   # r=19 from the PT-100 budget
    loss = model(input_ids, attention_mask, labels=labels).loss
"""

from .budget import (
    BudgetError,
    adept_params,
    adept_rank,
    dept_params,
    dept_rank,
    lora_params_per_rank,
    lora_rank,
    prompt_tuning_params,
    solve_rank,
    trainable_params,
)
from .config import (
    METHOD_CONFIGS,
    ADePTConfig,
    DePTConfig,
    LoRAConfig,
    PromptTuningConfig,
    SoftPromptConfig,
    config_from_dict,
)
from .model import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    METHOD_MODELS,
    ADePT,
    DePT,
    LoRA,
    PromptTuning,
    SoftPromptModel,
    SoftPromptOutput,
    ZeroShot,
    wrap,
)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "METHOD_CONFIGS",
    "METHOD_MODELS",
    "ADePT",
    "ADePTConfig",
    "BudgetError",
    "DePT",
    "DePTConfig",
    "LoRA",
    "LoRAConfig",
    "PromptTuning",
    "PromptTuningConfig",
    "SoftPromptConfig",
    "SoftPromptModel",
    "SoftPromptOutput",
    "ZeroShot",
    "adept_params",
    "adept_rank",
    "config_from_dict",
    "dept_params",
    "dept_rank",
    "lora_params_per_rank",
    "lora_rank",
    "prompt_tuning_params",
    "solve_rank",
    "trainable_params",
    "wrap",
]
