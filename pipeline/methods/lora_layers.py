"""PEFT's LoRA layers, put into the frozen base's attention projections and taken out again
(the LoRA method itself is in lora/; the wrapper owns scoring).

LoRA changes the base module in place, and only LoRA does: ``LoRA.unload()`` takes the layers
out again, and wrapping a base that still holds them is an error rather than a silent change.
"""

from __future__ import annotations

from torch import nn


def _is_lora_layer(module: nn.Module) -> bool:
    return type(module).__module__.startswith("peft.tuners.lora")


def has_lora(base: nn.Module) -> bool:
    return any(_is_lora_layer(module) for module in base.modules())


def strip_lora(base: nn.Module) -> None:
    """Replace every PEFT LoRA layer in ``base`` by the layer it wraps (no-op without any)."""
    for name, module in list(base.named_modules()):
        if name and _is_lora_layer(module) and hasattr(module, "get_base_layer"):
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child, module.get_base_layer())
    if "peft_config" in vars(base):  # PEFT's bookkeeping of injected adapters
        del base.peft_config


def merge_lora(base: nn.Module) -> None:
    """Add every LoRA update into the weight of the layer it wraps (PEFT's own ``merge``), then
    take the LoRA layers out: ``base`` is a plain model computing what base + LoRA computed."""
    for module in base.modules():
        if _is_lora_layer(module) and hasattr(module, "merge"):
            module.merge()
    strip_lora(base)


def inject_lora(base: nn.Module, config) -> list[nn.Parameter]:
    """Add LoRA (B = 0, so the model starts as the base) to ``config.target_modules``; the LoRA
    weights are float32 masters whatever the base dtype. ``config``: a resolved ``LoRAConfig``.
    Returns the trainable tensors."""
    from peft import LoraConfig, inject_adapter_in_model

    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
    )
    inject_adapter_in_model(peft_config, base)  # under the caller's seeded(config.seed)
    params = [p for n, p in base.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params
