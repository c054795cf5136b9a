"""Rank classification: summed log-probability of each choice continuation after the context.

When every choice of every row in a batch is a single token, one forward pass over the contexts
scores all choices from the next-token distribution; otherwise each (row, choice) pair is a
sequence and only its continuation positions reach the LM head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..methods import SoftPromptModel


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: the layout the wrapper runs in (``[P; x; pads]``, no pad before the text)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, : len(seq)] = torch.as_tensor(seq)
            mask[i, : len(seq)] = 1
    return ids, mask


def training_batch(
    contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded context+answer sequences with labels only on the answer tokens."""
    ids, mask = pad_right(
        [list(c) + list(a) for c, a in zip(contexts, answers, strict=True)], pad_id
    )
    labels = torch.full_like(ids, -100)
    for i, (context, answer) in enumerate(zip(contexts, answers, strict=True)):
        labels[i, len(context) : len(context) + len(answer)] = torch.as_tensor(answer)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _length_ordered_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def score_choices(
    model: SoftPromptModel,
    context_ids: Sequence[Sequence[int]],
    choice_ids: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    batch_size: int = 16,
    progress=None,
) -> list[list[float]]:
    """Per row, the summed log-prob of each choice's tokens after the context."""
    device = model.prompt.device if model.prompt is not None else model.base.device
    scores: list[list[float]] = [[] for _ in context_ids]
    lengths = [
        len(c) + max(len(x) for x in ch) for c, ch in zip(context_ids, choice_ids, strict=True)
    ]
    for batch in _length_ordered_batches(lengths, batch_size):
        single = all(len(x) == 1 for i in batch for x in choice_ids[i])
        if single:
            ids, mask = pad_right([context_ids[i] for i in batch], pad_id)
            logprobs = model.next_token_logprobs(ids.to(device), mask.to(device)).cpu()
            for row, i in enumerate(batch):
                scores[i] = [logprobs[row, x[0]].item() for x in choice_ids[i]]
        else:
            pairs = [(i, c) for i in batch for c in range(len(choice_ids[i]))]
            contexts = [context_ids[i] for i, _ in pairs]
            answers = [choice_ids[i][c] for i, c in pairs]
            tensors = training_batch(contexts, answers, pad_id)
            out = model(**{k: v.to(device) for k, v in tensors.items()})
            for (i, _), value in zip(pairs, out.logprobs.cpu().tolist(), strict=True):
                scores[i].append(value)
        if progress is not None:
            progress.update(len(batch))
    return scores
