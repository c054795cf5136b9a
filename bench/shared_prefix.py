"""Shared prompt prefix vs the usual path: ADePT-60 train step and scoring on real rows.

Every cell times the two paths round-robin in this one run (median of --repeats after a warm-up):
a train step (forward + backward + AdamW) on one batch of real training rows, and scoring
(rank classification, as the evaluate stage does it) of --score-batches batches of real test
rows, one evaluation per call (the shared path computes its prefix once per evaluation).

    OMP_WAIT_POLICY=PASSIVE python bench/shared_prefix.py
    OMP_WAIT_POLICY=PASSIVE python bench/shared_prefix.py --tasks sst2 --batches 8 --dtypes bfloat16
"""

from __future__ import annotations

import argparse

import torch
from common import (
    gemma,
    interleaved_medians,
    real_batch,
    report,
    timed_evaluation,
    timed_train_step,
)

from pipeline.engine.hardware import resolve_precision
from pipeline.methods import ADePT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,boolq")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--dtypes", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--score-batches", type=int, default=2)
    args = parser.parse_args()

    cells, table = [], []
    for dtype in (resolve_precision(d).dtype for d in args.dtypes.split(",")):
        tokenizer, base = gemma(dtype)
        model = ADePT(base, num_virtual_tokens=60)
        for task in args.tasks.split(","):
            for batch_size in (int(b) for b in args.batches.split(",")):
                batch, _ = real_batch(tokenizer, task, batch_size)
                rows = batch_size * args.score_batches
                _, encoded = real_batch(tokenizer, task, rows, split="test")
                pad = tokenizer.pad_token_id
                seconds = interleaved_medians(
                    {
                        "train_unshared": timed_train_step(model, batch, False),
                        "train_shared": timed_train_step(model, batch, True),
                        "score_unshared": timed_evaluation(model, encoded, pad, batch_size, False),
                        "score_shared": timed_evaluation(model, encoded, pad, batch_size, True),
                    },
                    args.repeats,
                )
                cell = {
                    "task": task,
                    "dtype": dtype,
                    "batch": batch_size,
                    "train_tokens": int(batch["input_ids"].shape[1]),
                    "seconds": seconds,
                    "train_speedup": seconds["train_unshared"] / seconds["train_shared"],
                    "score_speedup": seconds["score_unshared"] / seconds["score_shared"],
                    "score_rows_per_s_shared": rows / seconds["score_shared"],
                }
                cells.append(cell)
                table.append(
                    (
                        task,
                        dtype,
                        str(batch_size),
                        str(cell["train_tokens"]),
                        f"{seconds['train_unshared']:.2f} → {seconds['train_shared']:.2f}",
                        f"{cell['train_speedup']:.2f}×",
                        f"{rows / seconds['score_unshared']:.1f} → "
                        f"{cell['score_rows_per_s_shared']:.1f}",
                        f"{cell['score_speedup']:.2f}×",
                    )
                )
                print(cell, flush=True)
    report(
        {"bench": "shared_prefix", "threads": torch.get_num_threads(), "cells": cells},
        table,
        (
            "task",
            "dtype",
            "batch",
            "train width",
            "train s/step unshared → shared",
            "train speed-up",
            "scoring rows/s unshared → shared",
            "scoring speed-up",
        ),
    )


if __name__ == "__main__":
    main()
