"""Shard: a deterministic split of the training rows into one shard per data-parallel rank.

Inputs:  tokenize/train.
Outputs: ``shards.json``: ``world_size``, the per-rank micro batch, and per rank the row indices
         it trains on. Shards are interleaved by batch: the k-th batch of every rank together is
         one global batch, exactly the rows one process with batch ``batch_size × world_size``
         sees, so results do not depend on the number of ranks. Rows that do not fill a last
         global batch are dropped. With ``train.group_by_length`` the global batches are cut
         from length-sorted mega-batches of 50 (less padding; the same contract).
"""

from __future__ import annotations

from typing import Any

import datasets

from pipeline.core.stage import RunContext, Stage
from pipeline.engine.batches import interleaved_shards
from pipeline.util.files import write_json_atomic

SHARDS = "shards.json"


def training_lengths(train: datasets.Dataset) -> list[int]:
    """Tokens per training row: its context plus its gold answer (what a training batch holds)."""
    return [
        len(context) + len(choices[label])
        for context, choices, label in zip(
            train["context_ids"], train["choice_ids"], train["label"], strict=True
        )
    ]


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
    write_json_atomic(
        ctx.work_dir / SHARDS,
        {"world_size": world, "batch_size": batch, "rows": rows, "shards": shards},
    )
    per_rank = len(shards[0])
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
    outputs=(SHARDS,),
)
