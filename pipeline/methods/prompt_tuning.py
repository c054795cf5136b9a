"""Vanilla prompt tuning: the model sees [P; e_1 … e_n]; there is no embedding offset."""

from __future__ import annotations

from .config import PromptTuningConfig

__all__ = ["PromptTuningConfig"]
