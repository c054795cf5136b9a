"""Shared pieces of the benchmarks: real rows, batches, timing, output."""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.engine.hardware import describe_machine, resolve_precision
from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_model, load_tokenizer
from pipeline.engine.scoring import score_choices, training_batch
from pipeline.tasks import Encoder, get_task, load_task_splits

DATA_DIR = Path(
    os.environ.get("PIPELINE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
TASK_MAX_LENGTH = {"sst2": 128, "boolq": 256, "rte": 256}


def real_batch(
    tokenizer, task_name: str, batch: int, split: str = "train", max_length: int | None = None
):
    """A training batch of ``batch`` real rows (context + gold answer, labels on the answer)."""
    task = get_task(task_name)
    rows, source = load_task_splits(task, DATA_DIR, {split: batch})[split]
    length = max_length or TASK_MAX_LENGTH[task_name]
    encoded = Encoder(task, tokenizer, length).encode(rows, source)
    answers = [c[label] for c, label in zip(encoded["choice_ids"], encoded["label"], strict=True)]
    return training_batch(encoded["context_ids"], answers, tokenizer.pad_token_id), encoded


def gemma(dtype: str = "auto"):
    """Tokenizer and base; ``auto``: this machine's dtype, as a run resolves it."""
    dtype = resolve_precision(dtype).dtype
    return load_tokenizer(GEMMA_PACKAGE_SOURCE), load_model(GEMMA_PACKAGE_SOURCE, dtype, "sdpa")


def interleaved_medians(
    steps: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per step, timing the candidates in round-robin order (one call each per
    round) so that drift in machine load hits every candidate alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_train_step(model, batch: dict, shared_prefix: bool) -> Callable[[], None]:
    """One AdamW step of ``model`` on ``batch``, with the shared prompt prefix on or off."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        model.shared_prefix = shared_prefix
        model.train()
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()

    return step


def timed_evaluation(
    model, encoded: dict, pad_id: int, batch_size: int, shared_prefix: bool
) -> Callable[[], None]:
    """Score every row of ``encoded`` as the evaluate stage does: one evaluation per call (the
    shared path computes its prefix once per evaluation)."""

    def evaluate() -> None:
        model.shared_prefix = shared_prefix  # also drops a kept prefix
        model.eval()
        with torch.no_grad():
            score_choices(model, encoded["context_ids"], encoded["choice_ids"], pad_id, batch_size)

    return evaluate


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict, table: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """One JSON line (with the machine it was measured on), then a markdown table."""
    print(json.dumps({**result, "machine": describe_machine()}))
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(row) + " |")


torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
