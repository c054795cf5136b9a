"""Vanilla prompt tuning: config in :mod:`.config` (no torch), the model in :mod:`.model`."""

from .config import PromptTuningConfig, prompt_tuning_params

__all__ = ["PromptTuningConfig", "prompt_tuning_params"]
