"""LoRA: config and rank rule in :mod:`.config` (no torch), the model in :mod:`.model`."""

from .config import LoRAConfig, lora_params_per_rank, lora_rank

__all__ = ["LoRAConfig", "lora_params_per_rank", "lora_rank"]
