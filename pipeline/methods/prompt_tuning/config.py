"""Vanilla prompt tuning's config and parameter count (no torch: ``pipeline validate`` reads it).

Its L·d parameters are the budget the other methods are sized against (PT-100 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..base import SoftPromptConfig


@dataclass
class PromptTuningConfig(SoftPromptConfig):
    """L trainable vectors prepended to the input; one parameter group, ``prompt``."""

    method: ClassVar[str] = "prompt_tuning"
    can_merge: ClassVar[bool] = True

    num_virtual_tokens: int = field(default=100, metadata={"help": "L: prompt length."})


def prompt_tuning_params(length: int, d: int) -> int:
    """Vanilla PT: L·d."""
    return length * d
