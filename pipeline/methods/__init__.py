"""Parameter-efficient methods for frozen causal LMs: vanilla PT, DePT and ADePT (+ the LoRA
baseline), one folder each (PEFT's tuner layout): ``config.py`` holds the config dataclass, the
parameter count and the rank rule; ``model.py`` holds the module; the folder's ``__init__``
registers the method (:mod:`.registry`). Configs import no torch, so checking a YAML file is
instant; the model classes load on first use.

Usable without the pipeline::

    from pipeline.methods import ADePT
    model = ADePT(base_model, num_virtual_tokens=60)   # r=19 from the PT-100 budget
    loss = model(input_ids, attention_mask, labels=labels).loss
"""

from typing import Any

from .adept import ADePTConfig, adept_params, adept_rank
from .base import BudgetError, MethodConfig, SoftPromptConfig
from .dept import DePTConfig, dept_params, dept_rank
from .lora import LoRAConfig, lora_params_per_rank, lora_rank
from .prompt_tuning import PromptTuningConfig, prompt_tuning_params
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

MODEL_EXPORTS = (  # defined by the model modules (torch): loaded when first asked for
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "ADePT",
    "DePT",
    "LoRA",
    "PromptTuning",
    "SoftPromptModel",
    "SoftPromptOutput",
    "ZeroShot",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in MODEL_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .adapter_files import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
    from .adept.model import ADePT
    from .dept.model import DePT
    from .lora.model import LoRA
    from .prompt_tuning.model import PromptTuning
    from .wrapper import SoftPromptModel, SoftPromptOutput
    from .zero_shot import ZeroShot

    exports = {
        "ADAPTER_CONFIG_NAME": ADAPTER_CONFIG_NAME,
        "ADAPTER_WEIGHTS_NAME": ADAPTER_WEIGHTS_NAME,
        "ADePT": ADePT,
        "DePT": DePT,
        "LoRA": LoRA,
        "PromptTuning": PromptTuning,
        "SoftPromptModel": SoftPromptModel,
        "SoftPromptOutput": SoftPromptOutput,
        "ZeroShot": ZeroShot,
    }
    return exports[name]


__all__ = [
    "ADePTConfig",
    "BudgetError",
    "DePTConfig",
    "LoRAConfig",
    "MethodConfig",
    "MethodConfigError",
    "MethodSpec",
    "PromptTuningConfig",
    "SoftPromptConfig",
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
    *MODEL_EXPORTS,
]
