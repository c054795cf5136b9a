"""Shard: a deterministic split of the training rows into one shard per data-parallel rank.

Inputs:  tokenize/train (memory-mapped; only its lengths are read, and only with
         ``train.group_by_length``).
Outputs: ``shards.json`` (``world_size``, the per-rank micro batch, rows, rows per rank) and
         ``shards.npy``: one row of training-row indices per rank, the smallest unsigned integer
         type that holds them (4 bytes a row below 4G rows), memory-mapped by the train stage.
         Shards are interleaved by batch: the k-th batch of every rank together is one global
         batch, exactly the rows one process with batch ``batch_size × world_size`` sees, so
         results do not depend on the number of ranks. Rows that do not fill a last global
         batch are dropped. With ``train.group_by_length`` the global batches are cut from
         length-sorted mega-batches of 50 (less padding; the same contract).
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

from pipeline.core.stage import RunContext, Stage
from pipeline.engine.batches import SHARD_INDICES, SHARDS, interleaved_shards
from pipeline.util.files import write_json_atomic

LENGTH_BATCH_ROWS = 65_536


def training_lengths(train: datasets.Dataset) -> np.ndarray:
    """Tokens per training row: its context plus its gold answer (what a training batch
    holds), computed in Arrow a block of rows at a time."""
    parts = []
    for batch in train.data.table.to_batches(max_chunksize=LENGTH_BATCH_ROWS):
        contexts = pc.list_value_length(batch.column("context_ids")).to_numpy()
        choices = batch.column("choice_ids")
        choice_lengths = pc.list_value_length(choices.flatten()).to_numpy()
        first_choice = choices.offsets.to_numpy()[:-1] - choices.offsets[0].as_py()
        gold = first_choice + batch.column("label").to_numpy()
        parts.append(contexts + choice_lengths[gold])
    return np.concatenate(parts)


def run(ctx: RunContext) -> dict[str, Any]:
    world = ctx.config.distributed.world_size
    batch = ctx.config.train.batch_size
    train = datasets.load_from_disk(str(ctx.input_dir("tokenize") / "train"))
    rows = len(train)
    if rows < batch * world:
        raise ValueError(
            f"{rows} training rows cannot fill one global batch of {batch} × {world} ranks; "
            "lower train.batch_size or raise task.train_limit"
        )
    lengths = training_lengths(train) if ctx.config.train.group_by_length else None
    shards = interleaved_shards(rows, batch, world, ctx.config.train.seed, lengths)
    np.save(ctx.work_dir / SHARD_INDICES, shards.astype(np.min_scalar_type(rows)))
    per_rank = shards.shape[1]
    write_json_atomic(
        ctx.work_dir / SHARDS,
        {"world_size": world, "batch_size": batch, "rows": rows, "per_rank": per_rank},
    )
    return {"world_size": world, "per_rank": per_rank, "dropped": rows - world * per_rank}


STAGE = Stage(
    name="shard",
    run=run,
    upstream=("tokenize",),
    config_keys=(
        "distributed.nproc_per_node",
        "distributed.nnodes",
        "train.seed",
        "train.batch_size",
        "train.group_by_length",
    ),
    outputs=(SHARDS, SHARD_INDICES),
    version=2,  # 2: indices in shards.npy (a JSON list of every index does not scale)
)
