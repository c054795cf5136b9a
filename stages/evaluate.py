"""Evaluate: rank classification on the test split (the paper's protocol), plus zero-shot.

Inputs:  tokenize/{test,dev}, train/best_adapter.
Outputs: ``metrics.json`` (test metrics of the trained adapter and, when eval.zero_shot, of the
         base model alone through the same code, plus the base model's dev metrics as
         ``dev_zero_shot``: the reference the adapter's dev scores are read against, and
         ``below_zero_shot_on_dev`` when the kept adapter's dev score is lower: the adapter
         made the model worse on dev, a warning the summary and the registry repeat),
         ``timing.json`` (seconds per scored batch, peak resident memory),
         ``predictions.jsonl`` (per-row choice scores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from pipeline.core.stage import RunContext, Stage, read_manifest
from pipeline.engine.evaluation import evaluate_split
from pipeline.engine.models import base_identity, cache_dir, context_base_model, context_tokenizer
from pipeline.methods import SoftPromptModel, ZeroShot
from pipeline.util.files import peak_rss_mib, read_json, write_json_atomic

METRICS, TIMING, PREDICTIONS = "metrics.json", "timing.json", "predictions.jsonl"
log = logging.getLogger(__name__)


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    task = cfg.task.definition()
    tokenizer, base = context_tokenizer(ctx), context_base_model(ctx)
    test = datasets.load_from_disk(str(ctx.input_dir("tokenize") / "test"))
    adapter_dir = ctx.input_dir("train") / "best_adapter"

    # built one at a time, each unloaded after scoring (a LoRA adapter lives inside the base)
    models = {
        "adapter": lambda: SoftPromptModel.from_pretrained(
            base, adapter_dir, shared_prefix=cfg.model.shared_prefix_in_evaluation
        )
    }
    cache = zero_shot_cache(ctx) if cfg.eval.zero_shot else None
    known = read_json(cache) if cache is not None else None
    if cfg.eval.zero_shot and known is None:
        models["zero_shot"] = lambda: ZeroShot(base)
    results: dict[str, Any] = {"task": task.name, "split": "test", "rows": len(test)}
    timing: dict[str, float] = {}
    for name, build in models.items():
        model = build()
        started = time.perf_counter()
        with tqdm(total=len(test), desc=f"evaluate {name}", unit="row", mininterval=5) as bar:
            metrics, rows = evaluate_split(model, task, test, tokenizer, cfg.eval.batch_size, bar)
        model.unload()
        batches = max(math.ceil(len(test) / cfg.eval.batch_size), 1)
        timing[f"{name}_seconds_per_batch"] = round((time.perf_counter() - started) / batches, 4)
        results[name] = metrics
        if name == "adapter":
            with open(ctx.work_dir / PREDICTIONS, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        ctx.log_metrics({f"test/{name}/{k}": v for k, v in metrics.items()}, None)
    if known is not None:  # the bare base scored these rows before: same key, same scores
        log.info("zero-shot: scores reused from %s", cache)
        results["zero_shot"] = known["test"]
        timing.update(zero_shot_seconds_per_batch=known["seconds_per_batch"], zero_shot_cached=1)
        ctx.log_metrics({f"test/zero_shot/{k}": v for k, v in known["test"].items()}, None)
    if cfg.eval.zero_shot:
        if known is None:
            dev = datasets.load_from_disk(str(ctx.input_dir("tokenize") / "dev"))
            dev_metrics, _ = evaluate_split(
                ZeroShot(base), task, dev, tokenizer, cfg.eval.batch_size
            )
            write_json_atomic(
                cache,
                {
                    "test": results["zero_shot"],
                    "dev": dev_metrics,
                    "seconds_per_batch": timing["zero_shot_seconds_per_batch"],
                },
            )
        else:
            dev_metrics = known["dev"]
        results["dev_zero_shot"] = dev_metrics
        ctx.log_metrics({f"dev/zero_shot/{k}": v for k, v in dev_metrics.items()}, None)
        results.update(compare_on_dev(ctx, task, dev_metrics))
    timing["peak_rss_mib"] = peak_rss_mib()
    write_json_atomic(ctx.work_dir / METRICS, results)
    write_json_atomic(ctx.work_dir / TIMING, {"batch_size": cfg.eval.batch_size, **timing})
    return {k: v for k, v in results.items() if k in ("adapter", "zero_shot")}


ZERO_SHOT_VERSION = 1  # raised when scoring changes the scores of the same rows


def zero_shot_cache(ctx: RunContext) -> Path:
    """Where the bare base's test and dev scores of this run's rows are kept, keyed by what they
    depend on: the tokenized rows (the tokenize stage's digest: task rows, template, choices,
    tokenizer), the base's weights, dtype, attention, 8-bit, batch size and the scoring code's
    version. A second run, another method or a study job with the same key reuses them."""
    m, tokenized = ctx.config.model, read_manifest(ctx.input_dir("tokenize"))
    keyed = {
        "tokenized": tokenized["digest"],
        "base": base_identity(m.source),
        "dtype": m.compute_dtype,
        "attention": m.attention,
        "int8": m.load_in_8bit,
        "batch_size": ctx.config.eval.batch_size,
        "version": ZERO_SHOT_VERSION,
    }
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "zero_shot" / f"{key}.json"


def compare_on_dev(ctx: RunContext, task, zero_shot: dict[str, float]) -> dict[str, Any]:
    """The kept adapter's dev score (the selection metric) against the bare base's."""
    summary = json.loads((ctx.input_dir("train") / "train_summary.json").read_text())
    metric = task.selection_metric
    adapter, base = summary[f"best_dev_{metric}"], zero_shot[metric]
    below = adapter < base
    if below:
        log.warning(
            "on dev the adapter's %s (%.4f) is below the zero-shot base's (%.4f): training made "
            "the model worse; see the learning rates and train/history.jsonl",
            metric,
            adapter,
            base,
        )
    return {"dev_adapter": {metric: adapter}, "below_zero_shot_on_dev": below}


STAGE = Stage(
    name="evaluate",
    run=run,
    upstream=("tokenize", "train"),
    config_keys=("eval", "model", "task.name"),
    outputs=(METRICS, TIMING, PREDICTIONS),
    tracked={METRICS: "evaluate"},
)
