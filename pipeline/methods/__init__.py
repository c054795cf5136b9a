"""Parameter-efficient methods for frozen causal LMs: vanilla PT, DePT and ADePT (+ the LoRA
baseline), each one module that registers itself (:mod:`.registry`).

Usable without the pipeline::

    from pipeline.methods import ADePT
    model = ADePT(base_model, num_virtual_tokens=60)   # r=19 from the PT-100 budget
    loss = model(input_ids, attention_mask, labels=labels).loss
"""

from .adept import ADePT, ADePTConfig, adept_params, adept_rank
from .base import BudgetError, MethodConfig, SoftPromptConfig
from .dept import DePT, DePTConfig, dept_params, dept_rank
from .lora import LoRA, LoRAConfig, lora_params_per_rank, lora_rank
from .prompt_tuning import PromptTuning, PromptTuningConfig, prompt_tuning_params
from .registry import (
    MethodConfigError,
    MethodSpec,
    config_from_dict,
    config_from_section,
    get_method,
    method_names,
    register_method,
    section_from_config,
    wrap,
)
from .wrapper import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    SoftPromptModel,
    SoftPromptOutput,
)
from .zero_shot import ZeroShot

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "ADePT",
    "ADePTConfig",
    "BudgetError",
    "DePT",
    "DePTConfig",
    "LoRA",
    "LoRAConfig",
    "MethodConfig",
    "MethodConfigError",
    "MethodSpec",
    "PromptTuning",
    "PromptTuningConfig",
    "SoftPromptConfig",
    "SoftPromptModel",
    "SoftPromptOutput",
    "ZeroShot",
    "adept_params",
    "adept_rank",
    "config_from_dict",
    "config_from_section",
    "dept_params",
    "dept_rank",
    "get_method",
    "lora_params_per_rank",
    "lora_rank",
    "method_names",
    "prompt_tuning_params",
    "register_method",
    "section_from_config",
    "wrap",
]
