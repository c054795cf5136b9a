"""How long a run will take on this machine, said before it starts (``pipeline validate``, and
the line ``pipeline run`` logs before training).

The configured model is timed where it will run: a few forward+backward steps on real training
rows at the configured batch size, and scoring (or generating) length-ordered batches of dev and
test rows with the adapter and with the bare base. The rest is arithmetic over the split sizes:
train = steps × s/step + dev evaluations × dev rows × s/row; evaluate = test rows × s/row for
the adapter and for zero-shot + zero-shot dev rows; tokenize = the sample's encoding rate over
every row. Timings are cached per machine (CPU, ISA, threads, torch), model, dtype, method and
batch shape in ``$PIPELINE_CACHE_DIR/estimates.json``: validating again, or changing a
learning rate or the step count, costs no probe. A probe taken while other work held half the
CPUs or more (the 1-minute load average) says so in the line, and is taken again once the machine
is idle. One process only: a run on several ranks is not estimated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.config import PipelineConfig
from ..methods import ZeroShot, wrap
from ..tasks import Encoder, load_task_splits, plan_splits
from ..tasks.parallel import process_count
from ..tasks.splits import CHUNK_ROWS
from ..util.files import write_json_atomic
from .evaluation import evaluate_split
from .hardware import describe_machine
from .optim import build_optimizer
from .scoring import training_batch

log = logging.getLogger(__name__)

ESTIMATES_FILE = "estimates.json"
SAMPLE_ROWS = 256  # rows read per split to measure lengths and the tokenizer's rate
TIMED_STEPS = 3  # after one warm-up step
EVAL_BATCHES = 2  # length-ordered batches scored per split and model
SPLITS = ("train", "dev", "test")


@dataclass
class DataSample:
    """Split sizes and a random sample of each split, encoded."""

    rows: dict[str, int]
    encoded: dict[str, dict[str, list]]
    tokenize_seconds: float  # the whole tokenize stage; 0 when it is cached


@dataclass
class Timings:
    """What the probe measured (seconds)."""

    load: float
    step: float  # one optimiser step, at the sample's mean batch tokens
    step_tokens: float  # padded tokens of the timed batches, per step
    row: dict[str, float]  # per scored row, "<split>/<model>", at the timed batches' padding
    row_tokens: dict[str, float]  # padded tokens per scored row in the timed batches
    machine_load: float | None = None  # 1-minute load average when the probe began (None: unknown)


def sample_data(config: PipelineConfig, tokenizer: Any, tokenized: Path | None) -> DataSample:
    """The splits' sizes and a seeded sample of each: from the tokenize stage's output when it
    is cached (``tokenized``), else read and encoded here (timing the encoder)."""
    rng = random.Random(config.train.seed)
    if tokenized is not None:
        import datasets

        encoded, rows = {}, {}
        for split in SPLITS:
            data = datasets.load_from_disk(str(tokenized / split))
            rows[split] = len(data)
            picked = sorted(rng.sample(range(len(data)), min(SAMPLE_ROWS, len(data))))
            encoded[split] = data.select(picked)[:]
        return DataSample(rows, encoded, 0.0)
    task = config.task.definition()
    t = config.task
    started = time.perf_counter()
    plan = plan_splits(
        task, config.data_dir(), {"train": t.train_limit, "dev": t.dev_limit, "test": t.test_limit}
    )
    rows = plan.sizes
    picked = {split: rng.sample(range(n), min(SAMPLE_ROWS, n)) for split, n in rows.items()}
    sampled = load_task_splits(plan.subset(picked))
    reading = time.perf_counter() - started
    encoder = Encoder(task, tokenizer, t.max_length)
    encoded, encoding = {}, 0.0
    for split, (split_rows, source) in sampled.items():
        started = time.perf_counter()
        encoded[split] = encoder.encode(split_rows, source)
        encoding += (time.perf_counter() - started) / len(split_rows) * rows[split]
    encoding /= process_count(t.num_proc, sum(rows.values()), CHUNK_ROWS)
    return DataSample(rows, encoded, reading + encoding)


def answers(encoded: dict[str, list]) -> list[list[int]]:
    return [c[label] for c, label in zip(encoded["choice_ids"], encoded["label"], strict=True)]


def row_tokens(encoded: dict[str, list], index: int) -> int:
    """Tokens one row puts in a scoring batch: context plus its longest choice."""
    return len(encoded["context_ids"][index]) + max(len(c) for c in encoded["choice_ids"][index])


def padded_per_row(lengths: list[int], batch: int) -> float:
    """Padded tokens per row when ``lengths`` are sorted and cut into batches (evaluation)."""
    ordered = sorted(lengths)
    chunks = [ordered[i : i + batch] for i in range(0, len(ordered), max(1, batch))]
    return sum(max(c) * len(c) for c in chunks) / len(ordered)


def time_training(model: Any, config: PipelineConfig, sample: DataSample, pad_id: int):
    """(seconds per step, padded tokens per step) over TIMED_STEPS random batches."""
    train, batch_size = sample.encoded["train"], config.train.batch_size
    gold = answers(train)
    rng = random.Random(0)
    optimizer = build_optimizer(model, config.train)
    model.train()
    seconds = tokens = 0.0
    for step in range(TIMED_STEPS + 1):
        picked = rng.sample(range(len(train["label"])), min(batch_size, len(train["label"])))
        contexts = [train["context_ids"][i] for i in picked]
        batch = training_batch(contexts, [gold[i] for i in picked], pad_id)
        started = time.perf_counter()
        for _ in range(config.train.grad_accum):
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up kernels and allocations
            seconds += time.perf_counter() - started
            tokens += batch["input_ids"].numel() * config.train.grad_accum
    return seconds / TIMED_STEPS, tokens / TIMED_STEPS


def time_scoring(model: Any, config: PipelineConfig, encoded: dict, tokenizer: Any):
    """(seconds per row, padded tokens per row) scoring EVAL_BATCHES length-ordered batches."""
    batch_size = config.eval.batch_size
    count = min(len(encoded["label"]), batch_size * EVAL_BATCHES)
    subset = {name: values[:count] for name, values in encoded.items()}
    task = config.task.definition()
    started = time.perf_counter()
    evaluate_split(model, task, subset, tokenizer, batch_size)
    seconds = time.perf_counter() - started
    lengths = [row_tokens(subset, i) for i in range(count)]
    return seconds / count, padded_per_row(lengths, batch_size)


def machine_load() -> float:
    """The 1-minute load average: how many runnable tasks shared the CPUs lately."""
    return os.getloadavg()[0]


def is_busy(load: float | None) -> bool:
    """Whether other work held at least half of this machine's CPUs (None: not known)."""
    return load is not None and load >= 0.5 * (os.cpu_count() or 1)


def probe(
    config: PipelineConfig, load_base: Callable[[], Any], tokenizer: Any, sample: DataSample
) -> Timings:
    """Load the base (timed) and time training and scoring on the sample."""
    load_before = machine_load()
    started = time.perf_counter()
    base = load_base()
    load = time.perf_counter() - started
    model = wrap(
        base,
        config.method_config(base.config.get_text_config()),
        tokenizer,
        shared_prefix=config.shared_prefix_in_training,
    )
    step, step_tokens = time_training(model, config, sample, tokenizer.pad_token_id)
    model.shared_prefix = config.model.shared_prefix_in_evaluation
    rows, tokens = {}, {}
    for name, build in (("adapter", lambda: model), ("zero_shot", lambda: ZeroShot(base))):
        scored = build()
        for split in ("dev", "test"):
            key = f"{split}/{name}"
            rows[key], tokens[key] = time_scoring(scored, config, sample.encoded[split], tokenizer)
        scored.unload()  # the run wraps this base next: LoRA's layers come out
    return Timings(load, step, step_tokens, rows, tokens, load_before)


def probe_key(config: PipelineConfig) -> str:
    """What the probe's timings depend on: machine, model, dtype, method, shapes."""
    method = config.to_dict()["method"]
    method.pop("seed", None)
    keyed = {
        "machine": describe_machine(),
        "model": config.model.model_dump(exclude={"hub_token"}),
        "method": method,
        "task": config.task.model_dump(exclude={"train_limit", "dev_limit", "test_limit"}),
        "batch": [config.train.batch_size, config.train.grad_accum, config.eval.batch_size],
        "shared_prefix": config.shared_prefix_in_training,
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def cached_timings(
    config: PipelineConfig,
    cache: Path,
    load_base: Callable[[], Any],
    tokenizer: Any,
    sample: DataSample,
) -> tuple[Timings, bool]:
    """(timings, whether they came from the cache). A probe taken on a busy machine (or of
    unknown load) is taken again once the machine is idle: it timed the other work too."""
    key, path = probe_key(config), cache / ESTIMATES_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        timings = Timings(**known[key])
        stale = timings.machine_load is None or is_busy(timings.machine_load)
        if not (stale and not is_busy(machine_load())):
            return timings, True
    timings = probe(config, load_base, tokenizer, sample)
    write_json_atomic(path, {**known, key: asdict(timings)})
    return timings, False


STAGE_OVERHEAD = {"tokenize": 1.0, "shard": 0.5, "train": 2.0, "evaluate": 1.0, "export": 2.0}
"""Seconds a stage spends beside the timed work (manifests, checksums, tracking calls)."""


def scoring_seconds(sample: DataSample, timings: Timings, split: str, model: str, batch: int):
    """Seconds to score all of ``split`` with ``model``: the probe's per-row time, scaled by the
    padded tokens per row of the whole split (sorted into batches) over those it timed."""
    encoded, rows = sample.encoded[split], sample.rows[split]
    lengths = [row_tokens(encoded, i) for i in range(len(encoded["label"]))]
    per_batch_in_sample = max(1, round(batch * len(lengths) / rows))
    full = padded_per_row(lengths, per_batch_in_sample)
    key = f"{split}/{model}"
    return rows * timings.row[key] * full / timings.row_tokens[key]


def stage_seconds(config: PipelineConfig, sample: DataSample, timings: Timings) -> dict[str, float]:
    """Expected wall time of each stage when all of them run."""
    t, batch = config.train, config.eval.batch_size
    step = timings.step
    if t.group_by_length:  # length-grouped batches carry almost no padding
        train = sample.encoded["train"]
        tokens = [
            len(c) + len(a) for c, a in zip(train["context_ids"], answers(train), strict=True)
        ]
        step *= sum(tokens) / len(tokens) * t.batch_size * t.grad_accum / timings.step_tokens
    evaluations = len({*range(t.eval_every, t.steps + 1, t.eval_every), t.steps})
    dev = scoring_seconds(sample, timings, "dev", "adapter", batch)
    seconds = {
        "tokenize": sample.tokenize_seconds,
        "shard": 0.0,
        "train": timings.load + t.steps * step + evaluations * dev,
        "evaluate": scoring_seconds(sample, timings, "test", "adapter", batch),
        "export": 2 * timings.load if config.export.merged else 0.0,  # a fresh base, then save
    }
    if config.eval.zero_shot:
        seconds["evaluate"] += scoring_seconds(sample, timings, "test", "zero_shot", batch)
        seconds["evaluate"] += scoring_seconds(sample, timings, "dev", "zero_shot", batch)
    return {stage: value + STAGE_OVERHEAD[stage] for stage, value in seconds.items()}


def duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class Estimate:
    seconds: dict[str, float]  # stages that will run (cached ones are left out)
    cached: dict[str, bool]  # stage → cached
    probe_cached: bool
    machine: dict[str, Any]
    dtype: str
    probe_load: float | None = None  # the load average the probe was taken at
    load_now: float | None = None  # the load average when the estimate was made

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def total_range(self) -> tuple[float, float]:
        """(low, high) seconds of the whole run. Work sharing the CPUs slows it by about the
        share it takes, 1 + load / CPUs: a probe timed on a busy machine is that much high (the
        low end divides it out); a machine busy now makes the run that much slower (the high
        end). Both ends are the estimate on an idle machine at an idle probe."""
        cpus = os.cpu_count() or 1
        low = high = self.total
        if is_busy(self.probe_load):
            low /= 1 + self.probe_load / cpus
        if is_busy(self.load_now):
            high *= 1 + self.load_now / cpus
        return low, high

    def line(self) -> str:
        m = self.machine
        where = f"{m['cpu']}, {m['isa']}, {m['threads']} threads, {self.dtype}"
        parts = [
            f"{stage} cached" if self.cached[stage] else f"{stage} {duration(self.seconds[stage])}"
            for stage in self.cached
        ]
        cpus = os.cpu_count() or 1
        probe = "probe cached" if self.probe_cached else "probe just run"
        if is_busy(self.probe_load):
            probe += f" on a busy machine, load {self.probe_load:.1f} on {cpus} CPUs: likely high"
        low, high = self.total_range()
        total = f"total {duration(self.total)}"
        if (low, high) != (self.total, self.total):
            busy_now = f"; the machine is busy now (load {self.load_now:.1f} on {cpus} CPUs)"
            total = (
                f"total {duration(low)} to {duration(high)} (as probed: {duration(self.total)}"
                f"{busy_now if is_busy(self.load_now) else ''})"
            )
        return f"estimate on this machine ({where}; {probe}): {', '.join(parts)}; {total}"


def estimate_run(
    config: PipelineConfig,
    plan: dict[str, str],
    tokenizer: Any,
    load_base: Callable[[], Any],
    tokenized: Path | None,
    cache: Path,
) -> Estimate:
    """Per-stage wall time of a run of ``config`` on this machine; ``plan``: stage → "run" or
    "cached" (the runner's plan), ``tokenized``: the tokenize stage's output when cached."""
    sample = sample_data(config, tokenizer, tokenized)
    timings, from_cache = cached_timings(config, cache, load_base, tokenizer, sample)
    every = stage_seconds(config, sample, timings)
    if plan.get("train") == "cached":  # the model loads in the first stage that runs
        every["evaluate"] += timings.load
    cached = {stage: status == "cached" for stage, status in plan.items()}
    seconds = {stage: every[stage] for stage, hit in cached.items() if not hit}
    return Estimate(
        seconds,
        cached,
        from_cache,
        describe_machine(),
        config.model.compute_dtype,
        timings.machine_load,
        machine_load(),
    )


def estimate_stages(ctx: Any, plan: dict[str, str]) -> Estimate | str:
    """The estimate for a run (``ctx``: its RunContext, whose loaded base and tokenizer the
    stages then reuse), or why there is none."""
    from ..tasks import DataError
    from .models import ModelLoadError, cache_dir, context_base_model, context_tokenizer

    config = ctx.config
    world = config.distributed.world_size
    if world > 1:
        return f"not estimated: the probe times one process, this run has {world} ranks"
    if all(status == "cached" for status in plan.values()):
        return "not estimated: every stage is cached"
    tokenized = ctx.stage_dir("tokenize") if plan.get("tokenize") == "cached" else None
    try:
        tokenizer = context_tokenizer(ctx)
        return estimate_run(
            config, plan, tokenizer, lambda: context_base_model(ctx), tokenized, cache_dir()
        )
    except (DataError, ModelLoadError, OSError) as exc:
        return f"not estimated: {exc}"
