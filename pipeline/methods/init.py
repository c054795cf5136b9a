"""Soft-prompt initialisation from real token embeddings (never zeros)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .base import SoftPromptConfig


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draws inside come from ``seed``; the global RNG (CPU and CUDA) is as it was after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def gathered(module: nn.Module) -> contextlib.AbstractContextManager:
    """Whole weights of a module whose parameters ZeRO-3 partitioned at load; else a no-op."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned)


def _usable_vocab_ids(embedding: nn.Module, vocab_size: int, chunk: int = 16384) -> torch.Tensor:
    """Ids whose embedding norm is at least half the median: skips unused/degenerate rows."""
    device = next(embedding.parameters()).device
    norms = []
    with torch.no_grad():
        for start in range(0, vocab_size, chunk):
            ids = torch.arange(start, min(start + chunk, vocab_size), device=device)
            norms.append(embedding(ids).float().norm(dim=-1).cpu())
    norms_all = torch.cat(norms)
    return torch.nonzero(norms_all >= 0.5 * norms_all.median()).flatten()


def prompt_token_ids(
    config: SoftPromptConfig, embedding: nn.Module, vocab_size: int, tokenizer=None
) -> torch.Tensor:
    """The m token ids whose embeddings become the initial prompt."""
    m = config.num_virtual_tokens
    if config.prompt_init == "text":
        if tokenizer is None:
            raise ValueError("prompt_init='text' needs the tokenizer passed to the wrapper")
        ids = tokenizer(config.prompt_init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"prompt_init_text {config.prompt_init_text!r} tokenizes to nothing")
        repeats = -(-m // len(ids))
        return torch.tensor((ids * repeats)[:m])
    generator = torch.Generator().manual_seed(config.seed)
    candidates = _usable_vocab_ids(embedding, vocab_size)
    choice = torch.randperm(len(candidates), generator=generator)[:m]
    if len(choice) < m:  # tiny vocabularies: sample with replacement
        choice = torch.randint(len(candidates), (m,), generator=generator)
    return candidates[choice]


def init_prompt(
    config: SoftPromptConfig, embedding: nn.Module, vocab_size: int, tokenizer=None
) -> torch.Tensor:
    """(m, d) float32 prompt copied from real token embeddings (the space ``embedding`` returns)."""
    with gathered(embedding):
        ids = prompt_token_ids(config, embedding, vocab_size, tokenizer)
        device = next(embedding.parameters()).device
        with torch.no_grad():
            prompt = embedding(ids.to(device)).float().clone()
    if not torch.all(prompt.norm(dim=-1) > 0):
        raise ValueError("prompt initialisation produced a zero vector; choose another init")
    return prompt
