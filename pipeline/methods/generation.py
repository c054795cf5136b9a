"""Greedy decoding through a soft-prompt model: prompt + offset path, KV cache, batched.

Rows are laid out ``[P; x; pads]`` (:mod:`.layout`); generated tokens are appended after the
longest row, each at its own row's next position id (the pads between are masked), so a row's
tokens see exactly its prompt, its text and its own generated tokens. Every generated token goes
through the method's input path (ADePT's FFN offset, DePT's position offset, or the folded
table) like any input token. Only each row's newest position reaches the LM head.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .layout import right_align
from .prefix import run_cached


@torch.no_grad()
def greedy_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_token_ids: set[int],
    use_cache: bool = True,
) -> list[list[int]]:
    """Per row, the greedily generated token ids, up to and without the first stop token.

    ``use_cache=False`` re-runs the whole sequence every step (the reference the cached path is
    tested against)."""
    _, (attention_mask, input_ids) = right_align(attention_mask.to(input_ids.device), input_ids)
    lengths = attention_mask.long().sum(1)
    batch = input_ids.shape[0]
    generated = torch.zeros(batch, 0, dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    stops = torch.tensor(sorted(stop_token_ids), dtype=torch.long, device=input_ids.device)
    state = None
    for _ in range(max_new_tokens):
        if use_cache:
            logits, state = _cached_step(model, input_ids, attention_mask, generated, state)
        else:
            logits = _full_step(model, input_ids, lengths, generated)
        token = logits.argmax(-1)
        finished |= torch.isin(token, stops)
        generated = torch.cat([generated, token[:, None]], dim=1)
        if bool(finished.all()):
            break
    out = []
    for row in generated.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_token_ids), len(row))
        out.append(row[:cut])
    return out


def _full_step(model, input_ids, lengths, generated) -> torch.Tensor:
    """Next-token logits from the whole sequence: each row's text then its generated tokens."""
    pieces = zip(input_ids, lengths.tolist(), generated, strict=True)
    rows = [torch.cat([ids[:n], new]) for ids, n, new in pieces]
    width = max(len(r) for r in rows)
    ids = input_ids.new_zeros(len(rows), width)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    hidden = model.hidden_states(ids, mask)
    last = mask.sum(1) - 1 + model.num_virtual_tokens
    return model.lm_head(hidden[torch.arange(len(rows)), last])


def _cached_step(model, input_ids, attention_mask, generated, state):
    """One decoding step with the KV cache: the first runs ``[P; x; pads]``, each later one only
    the newest token. ``state``: (cache, full mask, next position per row)."""
    body = model.base.get_decoder()
    m = model.num_virtual_tokens
    batch = input_ids.shape[0]
    if state is None:
        embeds, positions = model.embed_text(input_ids, attention_mask)
        mask = attention_mask
        position_ids = positions + m
        cache = DynamicCache()
        if m:
            prompt = model.soft_prompt(batch, embeds.dtype)
            embeds = torch.cat([prompt, embeds], dim=1)
            mask = torch.cat([attention_mask.new_ones(batch, m), attention_mask], dim=1)
            prompt_positions = torch.arange(m, device=input_ids.device).expand(batch, m)
            position_ids = torch.cat([prompt_positions, position_ids], dim=1)
        hidden = run_cached(body, embeds, mask, position_ids, cache)
        lengths = attention_mask.long().sum(1)
        last = hidden[torch.arange(batch), m + lengths - 1]
        return model.lm_head(last), (cache, mask, lengths + m)
    cache, mask, next_position = state
    newest = generated[:, -1:]
    mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
    text_position = (next_position - m)[:, None]  # the token's index among its row's text
    embeds, _ = model.embed_text(newest, torch.ones_like(newest), text_position)
    hidden = run_cached(body, embeds, mask, next_position[:, None], cache)
    return model.lm_head(hidden[:, -1]), (cache, mask, next_position + 1)
