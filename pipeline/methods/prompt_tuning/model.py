"""Vanilla prompt tuning (Lester et al.): the model sees [P; e_1 … e_n], no embedding offset."""

from __future__ import annotations

from ..wrapper import SoftPromptModel
from .config import PromptTuningConfig


class PromptTuning(SoftPromptModel):
    """Vanilla prompt tuning; ``PromptTuning(base, num_virtual_tokens=100)``."""

    config_class = PromptTuningConfig
