"""The comparison study's cost columns, re-measured: train s/step and test s/batch per task and
method, with the shared prompt prefix on (the default) and off, in one run.

Each (task, method) is built from the study's own job config (its first learning-rate point:
steps, batch, max length and method settings as the study ran them) on the real Gemma 3 270M (in
the dtype ``model.dtype: auto`` resolves to on this machine), through the same wrapper and scoring
code; real training rows for the step, real test rows (--score-batches batches of
eval.batch_size) for scoring; ADePT's scoring also with its FFN folded into the input table (as
``export.fold`` serves it). Medians of --repeats, round-robin. The JSON line goes to
reports/bench/study_costs.json (a list, one entry per study), which bench/tables.py renders.

    OMP_WAIT_POLICY=PASSIVE python bench/study_costs.py configs/studies/gemma3_270m.yaml
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NamedTuple

from common import (
    gemma,
    interleaved_medians,
    real_batch,
    report,
    timed_evaluation,
    timed_train_step,
)

from pipeline.core.config import load_config
from pipeline.methods import ZeroShot, wrap
from pipeline.study.plan import load_study, plan_grid


class TaskRows(NamedTuple):
    """One task's real rows, the same for every method: a training batch, up to
    ``score_batches`` evaluation batches of test rows, and how many batches those fill (CB's 28
    test rows are one partial batch)."""

    train: dict
    test: dict
    batches: int
    eval_batch_size: int


def task_rows(tokenizer, task: str, cfg, score_batches: int) -> TaskRows:
    length, eval_batch = cfg.task.max_length, cfg.eval.batch_size
    train, _ = real_batch(tokenizer, task, cfg.train.batch_size, max_length=length)
    _, test = real_batch(tokenizer, task, eval_batch * score_batches, "test", length)
    return TaskRows(train, test, math.ceil(len(test["context_ids"]) / eval_batch), eval_batch)


def folded(model, evaluate: Callable[[], None]) -> Callable[[], None]:
    """``evaluate`` with the method's offset folded into the input table for that call only (the
    train steps timed beside it still need the unfolded model)."""
    table = model.fold().folded_embeddings
    model.unfold()

    def run() -> None:
        model.folded_embeddings = table
        try:
            evaluate()
        finally:
            model.unfold()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--score-batches", type=int, default=2)
    args = parser.parse_args()

    study, base_config = load_study(args.study)
    tokenizer, base = gemma("auto")
    pad = tokenizer.pad_token_id
    first_points = [job for job in plan_grid(study) if job.lr_index == 0]
    cells, table = [], []
    rows: dict[str, TaskRows] = {}
    for job in first_points:
        cfg = load_config(base_config, list(job.overrides))
        if job.task not in rows:
            rows[job.task] = task_rows(tokenizer, job.task, cfg, args.score_batches)
        batch, test, batches, eval_batch = rows[job.task]
        method = cfg.method_config(base.config.get_text_config())
        model = wrap(base, method, tokenizer)
        best = "shared" if model.shared_prefix else "unshared"  # before timing toggles it
        modes = (True, False) if model.shared_prefix else (False,)
        steps = {}
        for shared in modes:
            name = "shared" if shared else "unshared"
            steps[f"train_{name}"] = timed_train_step(model, batch, shared)
            steps[f"test_{name}"] = timed_evaluation(model, test, pad, eval_batch, shared)
        if method.can_fold:  # ADePT as export.fold serves it: the FFN folded into the input table
            steps["test_folded"] = folded(model, steps[f"test_{best}"])
        seconds = interleaved_medians(steps, args.repeats)
        model.unload()  # LoRA takes its layers out of the shared base (the others change nothing)
        per_batch = {k: v / batches for k, v in seconds.items() if k.startswith("test")}
        cells.append({"task": job.task, "method": job.method, "train": seconds, **per_batch})
        table.append(
            (
                job.task,
                job.method,
                f"{seconds.get('train_unshared', float('nan')):.2f}",
                f"{seconds[f'train_{best}']:.2f}",
                f"{per_batch.get('test_unshared', float('nan')):.2f}",
                f"{per_batch[f'test_{best}']:.2f}",
                f"{per_batch['test_folded']:.2f}" if method.can_fold else "—",
            )
        )
        print(cells[-1], flush=True)
    zero_shot = ZeroShot(base)  # the base alone: no prompt, nothing to share
    for task in study.tasks:
        _, test, batches, eval_batch = rows[task]
        seconds = interleaved_medians(
            {"test": timed_evaluation(zero_shot, test, pad, eval_batch, False)},
            args.repeats,
        )
        per_batch = seconds["test"] / batches
        cells.append({"task": task, "method": "zero_shot", "test": per_batch})
        table.append((task, "zero_shot", "—", "—", f"{per_batch:.2f}", f"{per_batch:.2f}", "—"))
    report(
        {
            "bench": "study_costs",
            "study": study.name,
            "dtype": str(base.dtype).removeprefix("torch."),
            "cells": cells,
        },
        table,
        (
            "task",
            "method",
            "train s/step unshared",
            "train s/step shared",
            "test s/batch unshared",
            "test s/batch shared",
            "test s/batch folded",
        ),
    )


if __name__ == "__main__":
    main()
