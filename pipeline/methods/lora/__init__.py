"""LoRA: config and rank rule in :mod:`.config` (no torch), the model in :mod:`.model`."""

from ..registry import register_method
from .config import LoRAConfig, lora_params_per_rank, lora_rank


def _model() -> type:
    """The model class, imported on first use (it loads torch)."""
    from .model import LoRA

    return LoRA


register_method(LoRAConfig, _model, label="LoRA")

__all__ = ["LoRAConfig", "lora_params_per_rank", "lora_rank"]
