"""The shared soft-prompt prefix: the prompt's keys and values, computed once per batch.

The soft prompt is the same m vectors for every row, sits at positions 0..m-1 and, attention
being causal, never sees the text. So its hidden states and its keys/values at every layer are
the same for all rows of a batch. Instead of computing them B times, the decoder runs the prompt
once (batch 1) into a KV cache, the cache is expanded to the batch, and only the text tokens run
against it, at positions m, m+1, … — the same numbers as the usual path (fp32: within 1e-5),
with autograd flowing through the cache into the prompt. In evaluation (no grad, eval mode) the
wrapper keeps one prefix for every batch until the model trains again.

Exact on decoders whose attention depends only on position ids and the mask: Llama, Gemma 3
(sliding window included: the cache keeps absolute indices, and rows are laid out
``[P; x; pads]``), Qwen 2/3, Mistral. Other model types fall back to the usual path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

SHARED_PREFIX_MODEL_TYPES = frozenset(
    {"llama", "gemma3", "gemma3_text", "qwen2", "qwen3", "mistral"}
)


def shared_prefix_supported(base: nn.Module) -> bool:
    """Whether this decoder is one the shared prefix is verified exact on."""
    return base.config.get_text_config().model_type in SHARED_PREFIX_MODEL_TYPES


@dataclass
class Prefix:
    """The prompt's per-layer keys/values (batch 1) and its final hidden states (1, m, d)."""

    key_values: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: torch.Tensor


def run_prefix(body: nn.Module, prompt_embeds: torch.Tensor) -> Prefix:
    """Run the decoder body over the prompt alone (1, m, d) at positions 0..m-1."""
    m = prompt_embeds.shape[1]
    cache = DynamicCache()
    positions = torch.arange(m, device=prompt_embeds.device)[None]
    hidden = run_cached(body, prompt_embeds, None, positions, cache)
    return Prefix([(layer.keys, layer.values) for layer in cache.layers], hidden)


def run_text(
    body: nn.Module,
    prefix: Prefix,
    text_embeds: torch.Tensor,
    full_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """Hidden states (B, m + n, d) of ``[P; x]``: the text runs against the prefix's cache.

    ``full_mask`` covers prompt + text (B, m + n); ``position_ids`` the text only (B, n).
    """
    batch = text_embeds.shape[0]
    cache = DynamicCache(
        ddp_cache_data=[
            (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix.key_values
        ]
    )
    hidden = run_cached(body, text_embeds, full_mask, position_ids, cache)
    return torch.cat([prefix.hidden.expand(batch, -1, -1), hidden], dim=1)


def run_cached(
    body: nn.Module,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    cache: DynamicCache,
) -> torch.Tensor:
    """Final hidden states of ``embeds`` attending to (and appended to) ``cache``."""
    out = body(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
    )
    return out.last_hidden_state
