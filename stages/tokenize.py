"""Tokenize: task rows → context and choice token ids, streamed to Arrow files.

Inputs:  the task's files under the data directory (task.data_dir / $PIPELINE_DATA_DIR) or the hub.
Outputs: ``train/``, ``dev/``, ``test/`` datasets as ``datasets.save_to_disk`` lays them out
         (context_ids, choice_ids, label, gold, truncated; dev and test also line and source:
         the row's line and fields as written) and ``stats.json``.
Setup:   load the tokenizer; count each file's rows and plan the paper's split protocol from the
         counts alone (seeded permutations of row indices), so no split is ever held in memory.
Run:     read the files in chunks, encode the chunks on ``task.num_proc`` processes (batched
         calls of the fast tokenizer; over-long rows lose passage tokens, never question or
         answer tokens), write each chunk to its split as it comes (shuffled splits through
         on-disk buckets). A progress bar counts rows. Memory is set by the chunk and bucket
         sizes, not by the data.
Cleanup: nothing is left but the outputs (the runner renames the finished work directory).
Raises:  DataError naming the file and line for malformed rows or labels outside the verbaliser.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from pipeline.core.stage import RunContext, Stage
from pipeline.engine.models import context_tokenizer
from pipeline.tasks import Encoder, plan_splits
from pipeline.tasks.encoded import SplitWriter, bucket_rows
from pipeline.tasks.parallel import encode_in_order, one_tokenizer_thread, process_count
from pipeline.tasks.splits import CHUNK_ROWS
from pipeline.util.files import write_json_atomic

SPLITS, STATS = ("train", "dev", "test"), "stats.json"


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    task = cfg.task.definition()
    limits = {"train": cfg.task.train_limit, "dev": cfg.task.dev_limit, "test": cfg.task.test_limit}
    plan = plan_splits(task, cfg.data_dir(), limits)
    encoder = Encoder(task, context_tokenizer(ctx), cfg.task.max_length)
    encoder.check_choices()
    num_proc = process_count(cfg.task.num_proc, sum(plan.sizes.values()), CHUNK_ROWS)
    writers = {
        split: SplitWriter(
            ctx.work_dir / split,
            size,
            ordered=plan.in_file_order(split),
            bucket_rows=bucket_rows(cfg.task.max_length),
            fingerprint=f"tokenize-{ctx.stage_key[:16]}-{split}",
        )
        for split, size in plan.sizes.items()
    }
    chunks = (
        (split, positions, rows, plan.source(split))
        for split, positions, rows in plan.chunks(CHUNK_ROWS)
    )
    with (
        one_tokenizer_thread(),
        tqdm(total=sum(plan.sizes.values()), desc="tokenize", unit=" rows", mininterval=5) as bar,
    ):
        for split, positions, batch in encode_in_order(encoder, chunks, num_proc):
            writers[split].add(positions, batch)
            bar.update(batch.num_rows)
    stats: dict[str, Any] = {"task": task.name, "max_length": cfg.task.max_length}
    if plan.cut is not None:  # one file cut into the splits: how, recorded with the run
        stats["split"] = plan.cut
    for split, writer in writers.items():
        stats[split] = writer.close().as_dict()
    write_json_atomic(ctx.work_dir / STATS, stats)
    return {split: stats[split]["rows"] for split in writers}


STAGE = Stage(
    name="tokenize",
    run=run,
    config_keys=("model.source", "task"),
    outputs=(*SPLITS, STATS),
    shared=True,
    version=3,  # 3: dev and test keep each row's line and fields; 2: a cut row fills its budget
)
