"""The zero-shot baseline: the frozen base model alone, scored through the same wrapper code as
every method (not a registered, trainable method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .base import MethodConfig
from .wrapper import SoftPromptModel


@dataclass
class ZeroShotConfig(MethodConfig):
    """No trainable part: the base model alone (not a registered, trainable method)."""

    method: ClassVar[str] = "zero_shot"

    def trainable_parameters(self, d: int) -> int:
        return 0


class ZeroShot(SoftPromptModel):
    """The frozen base model alone (no prompt, no offset): the zero-shot baseline, through the
    same scoring code as every method."""

    config_class = ZeroShotConfig

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base, ZeroShotConfig(), shared_prefix=False, _init_prompt=False)
