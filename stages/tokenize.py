"""Tokenize: task rows → context and choice token ids, saved with ``datasets.save_to_disk``.

Inputs:  the task's files under the data directory (task.data_dir / $PIPELINE_DATA_DIR) or the hub.
Outputs: ``train/``, ``dev/``, ``test/`` datasets (context_ids, choice_ids, label, gold,
         truncated) and ``stats.json``.
Setup:   load the tokenizer, read and split the rows with the paper's protocol.
Run:     batched calls of the fast tokenizer straight on the row lists (a ``datasets.map`` round
         trip through Arrow costs as much as the tokenizer itself); over-long rows lose passage
         tokens, never question or answer tokens.
Raises:  DataError naming the file and line for malformed rows or labels outside the verbaliser.
"""

from __future__ import annotations

from typing import Any

import datasets

from pipeline.core.files import write_json_atomic
from pipeline.core.stage import RunContext, Stage
from pipeline.engine.models import context_tokenizer
from pipeline.tasks import Encoder, load_task_splits

SPLITS, STATS = ("train", "dev", "test"), "stats.json"


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    task = cfg.task.definition()
    limits = {"train": cfg.task.train_limit, "dev": cfg.task.dev_limit, "test": cfg.task.test_limit}
    splits = load_task_splits(task, cfg.data_dir(), limits)
    encoder = Encoder(task, context_tokenizer(ctx), cfg.task.max_length)

    stats: dict[str, Any] = {"task": task.name, "max_length": cfg.task.max_length}
    for split, (rows, source) in splits.items():
        encoded = encoder.encode(rows, source)  # batched fast-tokenizer calls
        datasets.Dataset.from_dict(encoded).save_to_disk(str(ctx.work_dir / split))
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
)
