"""The batch layout every method runs in: ``[P; x; pads]``, no pad between prompt and text.

Rows given left-padded are right-aligned first (a stable per-row gather), so the prompt takes
positions 0..m-1 and each row's real tokens follow it at the same indices whatever the padding
side or the row's batch-mates. This matters for sliding-window attention (Gemma 3), which masks
by index distance, not position ids: with ``[P; pads; x]`` a short row beside a long one could
lose sight of its prompt.
"""

from __future__ import annotations

import torch


def right_aligned_order(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Per-row gather index that moves each row's real tokens to the front, in order, and its
    pads behind them; None when the batch is already laid out that way (right padding)."""
    mask = attention_mask.bool()
    if bool((mask[:, :-1] >= mask[:, 1:]).all()):
        return None
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices


def right_align(
    attention_mask: torch.Tensor, *tensors: torch.Tensor
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """``(order, tensors)``: every (B, n) tensor laid out ``[x; pads]``."""
    order = right_aligned_order(attention_mask)
    if order is None:
        return None, [attention_mask, *tensors]
    return order, [t.gather(1, order) for t in (attention_mask, *tensors)]
