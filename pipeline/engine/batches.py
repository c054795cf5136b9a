"""Which rows each rank trains on, batch by batch: shards and the resumable batch stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

GROUP_BATCHES = 50
"""Global batches per length-sorted mega-batch (``group_by_length`` in transformers uses 50)."""


def length_grouped(order: np.ndarray, lengths: Sequence[int], group: int) -> np.ndarray:
    """``order`` cut into consecutive mega-batches of ``group`` rows, each sorted by length
    (longest first, stable): consecutive rows then have similar lengths, and a batch cut from
    them little padding, while the mega-batches keep the shuffle's randomness."""
    lengths = np.asarray(lengths)
    pieces = [order[i : i + group] for i in range(0, len(order), group)]
    return np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in pieces])


def interleaved_shards(
    rows: int,
    batch_size: int,
    world_size: int,
    seed: int,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Per-rank row indices such that the k-th batch of every rank together form one global
    batch: the same rows a single process with batch ``batch_size × world_size`` would see.

    ``lengths`` (one per row): group global batches by length (:func:`length_grouped`); the
    batches stay the same for any split of the global batch over ranks.
    """
    global_batch = batch_size * world_size
    usable = rows // global_batch * global_batch
    order = np.random.default_rng(seed).permutation(rows)[:usable]
    if lengths is not None:
        order = length_grouped(order, lengths, GROUP_BATCHES * global_batch)
    order = order.reshape(-1, global_batch)
    return [
        order[:, r * batch_size : (r + 1) * batch_size].reshape(-1).tolist()
        for r in range(world_size)
    ]


def pad_fraction(shards: Sequence[Sequence[int]], lengths: Sequence[int], batch_size: int) -> float:
    """Padded share of all micro-batch tokens when each ``batch_size`` block of a shard is
    padded to its longest row (the measure ``group_by_length`` lowers)."""
    lengths = np.asarray(lengths)
    padded = real = 0
    for shard in shards:
        for start in range(0, len(shard), batch_size):
            rows = lengths[list(shard[start : start + batch_size])]
            padded, real = padded + int(rows.max()) * len(rows), real + int(rows.sum())
    return 1 - real / padded


class BatchStream:
    """Endless batches over one shard: consecutive ``batch_size`` blocks, the block order
    reshuffled (seeded, identically on every rank) each epoch.

    ``position`` (epoch, block) is all it takes to continue the exact same sequence.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int) -> None:
        if len(indices) < batch_size:
            raise ValueError(f"shard has {len(indices)} rows, fewer than batch_size={batch_size}")
        usable = len(indices) // batch_size * batch_size
        self.blocks = np.asarray(indices[:usable]).reshape(-1, batch_size)
        self.seed = seed
        self.epoch, self.block = 0, 0

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.block

    def seek(self, epoch: int, block: int) -> None:
        self.epoch, self.block = epoch, block

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self.block >= len(self.blocks):
            self.epoch, self.block = self.epoch + 1, 0
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.blocks))
        batch = self.blocks[order[self.block]].tolist()
        self.block += 1
        return batch
