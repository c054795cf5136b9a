"""Shards and length grouping (pipeline/engine/batches.py): numbers, not a model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.batches import (
    GROUP_BATCHES,
    interleaved_shards,
    length_grouped,
    pad_fraction,
)


@pytest.fixture
def lengths() -> np.ndarray:
    """BoolQ-like: row lengths varying several-fold."""
    return np.random.default_rng(0).integers(40, 400, size=3000)


@pytest.mark.parametrize("grouped", [False, True])
def test_two_ranks_of_four_see_one_process_of_eight(grouped, lengths) -> None:
    by_length = lengths if grouped else None
    one = interleaved_shards(len(lengths), 8, 1, seed=5, lengths=by_length)[0]
    two = interleaved_shards(len(lengths), 4, 2, seed=5, lengths=by_length)
    for k in range(len(one) // 8):
        global_batch = np.concatenate([two[0][4 * k : 4 * k + 4], two[1][4 * k : 4 * k + 4]])
        assert sorted(global_batch.tolist()) == sorted(one[8 * k : 8 * k + 8].tolist())


def test_grouping_keeps_the_rows_and_cuts_padding(lengths) -> None:
    plain = interleaved_shards(len(lengths), 4, 2, seed=5)
    grouped = interleaved_shards(len(lengths), 4, 2, seed=5, lengths=lengths)
    assert sorted(np.concatenate(grouped)) == sorted(np.concatenate(plain))  # same rows, once each
    before, after = pad_fraction(plain, lengths, 4), pad_fraction(grouped, lengths, 4)
    assert before > 0.3 and after < 0.05, (before, after)


def test_mega_batches_are_sorted_and_stay_shuffled(lengths) -> None:
    order = np.random.default_rng(1).permutation(len(lengths))
    group = GROUP_BATCHES * 8
    grouped = length_grouped(order, lengths, group)
    for start in range(0, len(order), group):
        piece = grouped[start : start + group]
        assert sorted(piece) == sorted(order[start : start + group])  # rows stay in their piece
        assert (np.diff(lengths[piece]) <= 0).all()  # longest first
    assert not (np.diff(lengths[grouped]) <= 0).all()  # not one global sort


def test_the_lr_schedule_is_transformers_linear_warmup_decay() -> None:
    """Our one-line schedule gives exactly transformers' rates at every step (resumed runs and
    earlier results depend on it)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from pipeline.core.config import TrainSection
    from pipeline.engine.optim import build_scheduler

    def rates(make) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
        scheduler, seen = make(optimizer), []
        for _ in range(40):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    ours = rates(lambda o: build_scheduler(o, TrainSection(steps=30, warmup_steps=7)))
    theirs = rates(lambda o: get_linear_schedule_with_warmup(o, 7, 30))
    assert ours == theirs and ours[7] == 0.3 and ours[30:] == [0.0] * 10
