"""Which rows each rank trains on, batch by batch: shards and the resumable batch stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def interleaved_shards(rows: int, batch_size: int, world_size: int, seed: int) -> list[list[int]]:
    """Per-rank row indices such that the k-th batch of every rank together form one global
    batch: the same rows a single process with batch ``batch_size × world_size`` would see."""
    global_batch = batch_size * world_size
    usable = rows // global_batch * global_batch
    order = np.random.default_rng(seed).permutation(rows)[:usable].reshape(-1, global_batch)
    return [
        order[:, r * batch_size : (r + 1) * batch_size].reshape(-1).tolist()
        for r in range(world_size)
    ]


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
