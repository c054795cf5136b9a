"""LoRA (HF PEFT) on the frozen base's attention projections: the weight-space baseline.

A sibling of the soft-prompt methods: no prompt and no offset; its own parameter group, ``lora``
(``train.lr.lora``). The rank is the one whose r·Σ(in + out) over the targeted projections is
closest to the PT budget (Gemma 3 270M, q/v: r=1, 46,080 vs PT-100's 64,000). LoRA changes the
base module in place; :meth:`LoRA.unload` takes the layers out (:mod:`..lora_layers`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..init import seeded
from ..lora_layers import inject_lora, strip_lora
from ..wrapper import SoftPromptModel
from .config import LoRAConfig


class LoRA(SoftPromptModel):
    """LoRA from PEFT on the attention projections, rank closest to the PT budget unless given:
    ``LoRA(base)``."""

    config_class = LoRAConfig

    def __init__(self, base: nn.Module, config: LoRAConfig | None = None, **kwargs: Any) -> None:
        if not kwargs.pop("register_base", True):
            raise ValueError("LoRA lives inside the base model: it cannot stay unregistered")
        kwargs.pop("_init_prompt", None)
        super().__init__(base, config, **kwargs)
        with seeded(self.config.seed):
            self._lora = inject_lora(base, self.config)
        injected = sum(p.numel() for p in self._lora)
        if injected != self.expected_trainable_parameters():
            raise ValueError(
                f"LoRA injected {injected} parameters, the budget formula says "
                f"{self.expected_trainable_parameters()} (projection names/shapes differ)"
            )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"lora": list(self._lora)}

    def unload(self) -> nn.Module:
        """Take the LoRA layers out of the base and return it, pristine."""
        strip_lora(self.base)
        self._lora = []
        return self.base
