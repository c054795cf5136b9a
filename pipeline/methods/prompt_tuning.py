"""Vanilla prompt tuning (Lester et al.): the model sees [P; e_1 … e_n], no embedding offset.

Its L·d parameters are the budget the other methods are sized against (PT-100 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base import SoftPromptConfig
from .registry import register_method
from .wrapper import SoftPromptModel


@dataclass
class PromptTuningConfig(SoftPromptConfig):
    """L trainable vectors prepended to the input; one parameter group, ``prompt``."""

    method: ClassVar[str] = "prompt_tuning"
    can_merge: ClassVar[bool] = True

    num_virtual_tokens: int = field(default=100, metadata={"help": "L: prompt length."})


def prompt_tuning_params(length: int, d: int) -> int:
    """Vanilla PT: L·d."""
    return length * d


class PromptTuning(SoftPromptModel):
    """Vanilla prompt tuning; ``PromptTuning(base, num_virtual_tokens=100)``."""


register_method(PromptTuningConfig, PromptTuning, label="PT")
