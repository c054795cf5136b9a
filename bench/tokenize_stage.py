"""Tokenize stage throughput vs raw batched ``tokenizer(...)`` on the same rows (and vs the Rust
backend's ``encode_batch``, which the stage calls directly), and the time of a cached re-run
(which must not tokenize at all). Everything the stage does counts: reading the files, the
protocol split, templates, truncation, choices, saving with ``datasets``.

    python bench/tokenize_stage.py --task boolq

Raw and stage alternate ``--repeats`` times, so that a busy second core (a background study)
or this VM's drifting speed affects both sides alike; it prints the best of each and the median
of the per-repeat ratios (the steadier number: single calls of the Rust tokenizer vary by ±15%
here).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from common import DATA_DIR, TASK_MAX_LENGTH, report

from pipeline.core.config import load_config
from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_tokenizer
from pipeline.runner import Runner
from pipeline.tasks import get_task, load_task_splits


def seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def bench_runner(tmp: Path, task: str) -> Runner:
    """A pipeline runner (no tracking) for a config that only names the task."""
    config_file = tmp / "bench.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "name": "bench",
                "output_dir": str(tmp),
                "task": {
                    "name": task,
                    "data_dir": str(DATA_DIR),
                    "max_length": TASK_MAX_LENGTH[task],
                },
            }
        )
    )
    return Runner(load_config(config_file), track=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="boolq", choices=sorted(TASK_MAX_LENGTH))
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    args = parser.parse_args()

    task = get_task(args.task)
    splits = load_task_splits(task, DATA_DIR, {})
    rows = [r for split in splits.values() for r in split[0]]
    tokenizer = load_tokenizer(GEMMA_PACKAGE_SOURCE)
    texts = [task.context(task.normalise(r, "bench")) for r in rows]
    raw, rust, stage, cached_seconds = [], [], [], []
    for _ in range(args.repeats):
        raw.append(seconds(lambda: tokenizer(texts)))
        # the Rust floor: no per-row Python conversion
        rust.append(seconds(lambda: tokenizer._tokenizer.encode_batch(texts)))
        with tempfile.TemporaryDirectory() as tmp:
            runner = bench_runner(Path(tmp), args.task)
            runner.context.memo("tokenizer", lambda: tokenizer)  # exclude tokenizer loading
            stage.append(runner.run(("tokenize",))[0].seconds)
            start = time.perf_counter()
            cached = runner.run(("tokenize",))[0]
            cached_seconds.append(time.perf_counter() - start)
    assert cached.status == "cached"
    median_ratio = statistics.median(r / s for r, s in zip(raw, stage, strict=True))
    raw, rust, stage, cached_seconds = min(raw), min(rust), min(stage), min(cached_seconds)
    throughput_ratio = raw / stage
    result = {
        "bench": "tokenize",
        "task": args.task,
        "rows": len(rows),
        "raw_tokenizer_s": raw,
        "rust_encode_batch_s": rust,
        "stage_s": stage,
        "repeats": args.repeats,
        "cached_rerun_s": cached_seconds,
        "stage_over_raw_throughput": throughput_ratio,
        "median_paired_ratio": median_ratio,
        "goal_met": median_ratio >= 0.9,
        "stage_over_rust_throughput": rust / stage,
    }
    report(
        result,
        [
            ("raw tokenizer(texts)", f"{raw:.2f}", f"{len(rows) / raw:,.0f}"),
            ("Rust backend encode_batch(texts)", f"{rust:.2f}", f"{len(rows) / rust:,.0f}"),
            ("tokenize stage", f"{stage:.2f}", f"{len(rows) / stage:,.0f}"),
            ("cached re-run", f"{cached_seconds:.3f}", "-"),
        ],
        ("what", "seconds", "rows/s"),
    )
    print(
        f"\nstage throughput / raw: best-of {throughput_ratio:.2f}, median of the "
        f"{args.repeats} paired runs {median_ratio:.2f} (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
