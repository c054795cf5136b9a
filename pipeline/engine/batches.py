"""Which rows each rank trains on, batch by batch: shards and the resumable batch stream."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHARDS, SHARD_INDICES = "shards.json", "shards.npy"  # the shard stage's outputs
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
) -> np.ndarray:
    """Per-rank row indices (one row of the array per rank) such that the k-th batch of every
    rank together form one global batch: the same rows a single process with batch
    ``batch_size × world_size`` would see.

    ``lengths`` (one per row): group global batches by length (:func:`length_grouped`); the
    batches stay the same for any split of the global batch over ranks.
    """
    global_batch = batch_size * world_size
    usable = rows // global_batch * global_batch
    order = np.random.default_rng(seed).permutation(rows)[:usable]
    if lengths is not None:
        order = length_grouped(order, lengths, GROUP_BATCHES * global_batch)
    order = order.reshape(-1, global_batch)
    return np.stack(
        [order[:, r * batch_size : (r + 1) * batch_size].reshape(-1) for r in range(world_size)]
    )


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


def read_shard(shard_dir: Path, rank: int, world: int) -> np.ndarray:
    """This rank's row indices from the shard stage's output (memory-mapped), checked against
    the launch's world size."""
    meta = json.loads((shard_dir / SHARDS).read_text())
    if meta["world_size"] != world:
        raise ValueError(
            f"shard/{SHARDS} was made for {meta['world_size']} ranks, this launch has {world}"
        )
    return np.load(shard_dir / SHARD_INDICES, mmap_mode="r")[rank]


class TrainingRows:
    """The tokenized training split, read a batch at a time from its memory-mapped Arrow
    files (never whole into Python): each row's context ids and its gold answer's ids."""

    def __init__(self, dataset: Any) -> None:
        self.rows = dataset.select_columns(["context_ids", "choice_ids", "label"])

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
        """(contexts, answers) of the rows at ``indices``, in that order."""
        picked = self.rows[list(indices)]
        answers = [c[label] for c, label in zip(picked["choice_ids"], picked["label"], strict=True)]
        return picked["context_ids"], answers


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
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its block order)

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
        if self._order is None or self._order[0] != self.epoch:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.blocks))
            self._order = (self.epoch, order)
        batch = self.blocks[self._order[1][self.block]].tolist()
        self.block += 1
        return batch
