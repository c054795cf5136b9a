"""HF PEFT's on-disk format for the methods PEFT has (prompt tuning, LoRA).

An adapter directory the pipeline writes (format 3):

- ``adapter_model.safetensors``: the trained tensors. PT and LoRA under PEFT's key names
  (``prompt_embeddings``; ``base_model.model.<module path>.lora_A.weight`` / ``lora_B``), so
  ``peft.PeftModel.from_pretrained(base, directory)``, lm-eval's ``peft=`` and vLLM's LoRA loader
  read them as they are. ADePT and DePT (which PEFT does not have) under the pipeline's names
  (``soft_prompt.weight``, ``offset.*``: docs/methods.md#on-disk-format).
- ``adapter_config.json``: PEFT's config (``peft_type``, ``task_type``,
  ``base_model_name_or_path``, ...) for PT and LoRA; absent for ADePT and DePT.
- ``pipeline_adapter.json``: the pipeline's own record for every method (format version, the
  method's config, its module, embedding width, vocabulary size, base model, trainable count).

Formats 1 and 2 (every method under the pipeline's key names, the pipeline's record in
``adapter_config.json``) still load.
"""

from __future__ import annotations

from typing import Any

import torch

PEFT_PROMPT = "prompt_embeddings"
OUR_PROMPT = "soft_prompt.weight"
OUR_BASE, PEFT_BASE = "base.", "base_model.model."
LORA_PARTS = ("lora_A", "lora_B")
PEFT_METHODS = ("prompt_tuning", "lora")


def to_peft(method: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names (unchanged for a method PEFT does not have)."""
    if method == "prompt_tuning":
        return {PEFT_PROMPT if k == OUR_PROMPT else k: v for k, v in state.items()}
    if method == "lora":
        return {_lora_to_peft(k): v for k, v in state.items()}
    return state


def from_peft(method: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_peft`."""
    if method == "prompt_tuning":
        return {OUR_PROMPT if k == PEFT_PROMPT else k: v for k, v in state.items()}
    if method == "lora":
        return {_lora_from_peft(k): v for k, v in state.items()}
    return state


def _lora_to_peft(key: str) -> str:
    """``base.model.layers.0.self_attn.q_proj.lora_A.default.weight`` →
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    for part in LORA_PARTS:
        key = key.replace(f".{part}.default.", f".{part}.")
    return PEFT_BASE + key.removeprefix(OUR_BASE)


def _lora_from_peft(key: str) -> str:
    for part in LORA_PARTS:
        key = key.replace(f".{part}.", f".{part}.default.")
    return OUR_BASE + key.removeprefix(PEFT_BASE)


def peft_config(model: Any) -> dict[str, Any] | None:
    """PEFT's ``adapter_config.json`` for a wrapped PT or LoRA model (None for other methods),
    as PEFT's own config class writes it."""
    method = model.config.method
    if method not in PEFT_METHODS:
        return None
    text = model.base.config.get_text_config()
    common = {
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": getattr(model.base.config, "_name_or_path", None),
        "inference_mode": True,
    }
    if method == "prompt_tuning":
        from peft import PromptTuningConfig

        config = PromptTuningConfig(
            num_virtual_tokens=model.num_virtual_tokens,
            token_dim=model.embedding_dim,
            num_transformer_submodules=1,
            num_attention_heads=text.num_attention_heads,
            num_layers=text.num_hidden_layers,
            **common,
        )
    else:
        from peft import LoraConfig

        c = model.config
        config = LoraConfig(
            r=c.rank,
            lora_alpha=c.alpha,
            lora_dropout=c.dropout,
            target_modules=sorted(c.target_modules),
            **common,
        )
    return config.to_dict()
