"""A prompt-based adapter as input embeddings for an engine that takes them: transformers'
``inputs_embeds``, vLLM's prompt embeddings (``enable_prompt_embeds=True``). One base model then
serves every PT, DePT and ADePT adapter unmerged: each request carries its adapter's embeddings.

    from pipeline import load_adapter
    from pipeline.methods.embeddings import prompt_embeddings

    model = load_adapter(base, "runs/NAME/export/adapter")
    embeds = prompt_embeddings(model.adapter, tokenizer(text).input_ids)   # (m + n, d)
    logits = base(inputs_embeds=embeds[None]).logits                      # = model(ids).logits
                                                                          #   after m positions
The rows are what the wrapper's decoder sees (``[P; e'_1 … e'_n]``): the soft prompt, then each
token's input embedding after the method's offset (ADePT's token FFN, DePT's position offset),
in the space the base's input embedding returns (Gemma's ×√d included), at positions 0..m+n-1.
LoRA has no prompt (its weights live in the base): serve it with the engine's own LoRA support.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .wrapper import SoftPromptModel


@torch.no_grad()
def prompt_embeddings(
    model: SoftPromptModel, input_ids: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """(m + n, d) embeddings of one row of token ids under ``model``'s adapter: the same
    computation as training and scoring (the wrapper's own ``embed_text`` and prompt)."""
    if model.training:
        raise ValueError("prompt_embeddings is for inference: call model.eval() (no dropout)")
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    embeds, _ = model.embed_text(ids, torch.ones_like(ids))
    if model.num_virtual_tokens:
        embeds = torch.cat([model.soft_prompt(1, embeds.dtype), embeds], dim=1)
    return embeds[0]
