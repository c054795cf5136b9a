"""Vanilla prompt tuning: config in :mod:`.config` (no torch), the model in :mod:`.model`."""

from ..registry import register_method
from .config import PromptTuningConfig, prompt_tuning_params


def _model() -> type:
    """The model class, imported on first use (it loads torch)."""
    from .model import PromptTuning

    return PromptTuning


register_method(PromptTuningConfig, _model, label="PT")

__all__ = ["PromptTuningConfig", "prompt_tuning_params"]
