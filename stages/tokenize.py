"""Tokenize: task rows → context and choice token ids, saved with ``datasets.save_to_disk``.

Inputs:  the task's files under the data directory (task.data_dir / $PIPELINE_DATA_DIR) or the hub.
Outputs: ``train/``, ``dev/``, ``test/`` datasets (context_ids, choice_ids, label, gold,
         truncated; dev and test also line and source: the row's line and fields as written)
         and ``stats.json``.
Setup:   load the tokenizer, read and split the rows with the paper's protocol.
Run:     batched calls of the fast tokenizer straight on the row lists (a ``datasets.map`` round
         trip through Arrow costs as much as the tokenizer itself); over-long rows lose passage
         tokens, never question or answer tokens.
Raises:  DataError naming the file and line for malformed rows or labels outside the verbaliser.
"""

from __future__ import annotations

from typing import Any

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from pipeline.core.stage import RunContext, Stage
from pipeline.engine.models import context_tokenizer
from pipeline.tasks import Encoder, load_task_splits
from pipeline.util.files import write_json_atomic

SPLITS, STATS = ("train", "dev", "test"), "stats.json"
IDS = pa.list_(pa.int64())
COLUMN_TYPES = {
    "context_ids": IDS,
    "choice_ids": pa.list_(IDS),
    "label": pa.int64(),
    "gold": pa.float64(),
    "truncated": pa.bool_(),
    "answers": pa.list_(pa.string()),  # generation tasks only
    "line": pa.int64(),  # dev and test: the row's line in its file
    "source": pa.string(),  # dev and test: the row's fields as written (JSON)
}
KEEP_SOURCE = ("dev", "test")  # splits whose predictions are joined back to the user's file


def as_dataset(columns: dict[str, list], fingerprint: str) -> datasets.Dataset:
    """The encoded columns as a dataset: Arrow arrays of known types (``from_dict`` infers them
    value by value; a column missing from ``COLUMN_TYPES`` still is) named by the stage's key
    (``from_dict`` hashes every row to name it)."""
    table = pa.table(
        {name: pa.array(values, COLUMN_TYPES.get(name)) for name, values in columns.items()}
    )
    return datasets.Dataset(InMemoryTable(table), fingerprint=fingerprint)


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    task = cfg.task.definition()
    limits = {"train": cfg.task.train_limit, "dev": cfg.task.dev_limit, "test": cfg.task.test_limit}
    splits = load_task_splits(task, cfg.data_dir(), limits)
    encoder = Encoder(task, context_tokenizer(ctx), cfg.task.max_length)

    stats: dict[str, Any] = {"task": task.name, "max_length": cfg.task.max_length}
    for split, (rows, source) in splits.items():
        encoded = encoder.encode(rows, source, keep_source=split in KEEP_SOURCE)
        dataset = as_dataset(encoded, fingerprint=f"tokenize-{ctx.stage_key[:16]}-{split}")
        dataset.save_to_disk(str(ctx.work_dir / split))
        lengths = [len(c) for c in encoded["context_ids"]]
        stats[split] = {
            "rows": len(lengths),
            "truncated": int(sum(encoded["truncated"])),
            "max_context_tokens": max(lengths),
            "mean_context_tokens": round(sum(lengths) / len(lengths), 1),
        }
    write_json_atomic(ctx.work_dir / STATS, stats)
    return {split: stats[split]["rows"] for split in splits}


STAGE = Stage(
    name="tokenize",
    run=run,
    config_keys=("model.source", "task"),
    outputs=(*SPLITS, STATS),
    shared=True,
    version=3,  # 3: dev and test keep each row's line and fields; 2: a cut row fills its budget
)
