"""Train: fit the method's trainable part on the frozen base; keep the best adapter on dev.

A recipe in four steps (torchtune style), each its own function:

Setup:    load base + tokenizer, wrap with the configured method, build the backend (one
          process, or a DeepSpeed engine: pipeline/engine/backends.py), read the tokenized rows
          and this rank's shard.
Resume:   from the newest verified checkpoint of this exact stage key, if any (the batch stream,
          best dev score and history continue exactly).
Loop:     ``train.steps`` optimiser steps of ``batch_size × grad_accum × world_size`` rows, one
          learning rate per parameter group with linear warm-up/decay, gradient clipping; dev
          evaluation every ``eval_every`` steps and at the end (the task's first metric picks the
          best adapter); a checkpoint every ``checkpoint_every`` steps and on SIGTERM/SIGUSR1
          (then it stops with Preempted: pipeline/launch/signals.py).
Finalize: rank 0 copies history, best adapter and the loss curve into the stage output; other
          ranks write nothing. The base is unloaded (LoRA's layers out) for the next stage.
Raises:   FloatingPointError when the loss turns NaN/inf (the last good adapter is kept);
          ValueError for a corrupt checkpoint (checksum mismatch).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from pipeline.core.stage import RunContext, Stage
from pipeline.engine.backends import build_backend, load_training_base
from pipeline.engine.batches import BatchStream, TrainingRows, read_shard
from pipeline.engine.checkpoint import Checkpointer
from pipeline.engine.distributed import any_rank, init_process_group
from pipeline.engine.estimate import duration
from pipeline.engine.evaluation import evaluate_split
from pipeline.engine.models import context_tokenizer
from pipeline.engine.scoring import training_batch
from pipeline.launch.signals import StopFlag, clear_marker, mark_preempted
from pipeline.methods import wrap
from pipeline.tasks import Task
from pipeline.tracking.plots import loss_curve
from pipeline.util.files import peak_rss_mib, write_json_atomic
from pipeline.util.ranks import dist_env

log = logging.getLogger(__name__)
PACE_AFTER_STEPS = 10  # steps timed before the measured pace is logged
HISTORY, BEST_ADAPTER, SUMMARY, CURVE = (
    "history.jsonl",
    "best_adapter",
    "train_summary.json",
    "loss_curve.png",
)


@dataclass
class Trainer:
    """Everything the loop needs, built by :func:`setup`."""

    ctx: RunContext
    task: Task
    rank: int
    world: int
    model: Any
    backend: Any
    tokenizer: Any
    pad_id: int
    rows: TrainingRows
    dev: Any
    stream: BatchStream
    checkpointer: Checkpointer
    scratch: Path

    @property
    def history_path(self) -> Path:
        return self.scratch / HISTORY

    @property
    def best_dir(self) -> Path:
        return self.scratch / BEST_ADAPTER


@dataclass
class Progress:
    """Where training stands: the next step, the best dev result, the logged history."""

    start: int = 1
    best: dict[str, Any] = field(
        default_factory=lambda: {"step": None, "score": -math.inf, "metrics": {}}
    )
    history: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: float = 0.0  # optimiser steps alone (no dev evaluation or I/O)
    timed_steps: int = 0


def setup(ctx: RunContext) -> Trainer:
    cfg = ctx.config
    if cfg.distributed.deepspeed:
        init_process_group()
    rank, world, _ = dist_env()
    tokenizer, base = context_tokenizer(ctx), load_training_base(ctx)
    torch.manual_seed(cfg.train.seed)
    # an int8 base stays outside the engine's module (mode b); otherwise the engine owns it all
    model = wrap(
        base,
        cfg.method_config(base.config.get_text_config()),
        tokenizer,
        register_base=not cfg.model.load_in_8bit,
        shared_prefix=cfg.shared_prefix_in_training,
    )
    backend = build_backend(model, cfg)
    logging.getLogger("pipeline.ranks").info(  # every rank logs this line (the others: rank 0)
        "%s: %d trainable parameters; rank %d of %d on %s",
        model.config.method,
        model.expected_trainable_parameters(),
        rank,
        world,
        socket.gethostname(),
    )
    data_dir = ctx.input_dir("tokenize")
    shard = read_shard(ctx.input_dir("shard"), rank, world)
    scratch = ctx.scratch_dir()
    return Trainer(
        ctx=ctx,
        task=cfg.task.definition(),
        rank=rank,
        world=world,
        model=model,
        backend=backend,
        tokenizer=tokenizer,
        pad_id=tokenizer.pad_token_id,
        rows=TrainingRows(datasets.load_from_disk(str(data_dir / "train"))),
        dev=datasets.load_from_disk(str(data_dir / "dev")),
        stream=BatchStream(shard, cfg.train.batch_size, cfg.train.seed),
        checkpointer=Checkpointer(scratch, ctx.stage_key),
        scratch=scratch,
    )


def read_history(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def resume(t: Trainer) -> Progress:
    """Continue from the newest checkpoint of this stage key, or start fresh."""
    if t.rank == 0:
        clear_marker(t.scratch)
    state = t.checkpointer.resume(t.backend)
    if state:
        t.stream.seek(*state["stream"])
        progress = Progress(
            start=state["step"] + 1,
            best=state["best"],
            history=read_history(t.history_path, state["step"]),
        )
    else:
        progress = Progress()
        if t.rank == 0:
            shutil.rmtree(t.best_dir, ignore_errors=True)
    if t.rank == 0:
        t.history_path.write_text("".join(json.dumps(r) + "\n" for r in progress.history))
    return progress


def next_micro_batches(t: Trainer) -> list[dict[str, torch.Tensor]]:
    micro = []
    for _ in range(t.ctx.config.train.grad_accum):
        micro.append(training_batch(*t.rows.batch(next(t.stream)), t.pad_id))
    return micro


def evaluate_dev(t: Trainer, step: int, progress: Progress) -> dict[str, float]:
    """Score dev; a better score than any before saves the adapter (collective under ZeRO-3)."""
    metrics, _ = evaluate_split(
        t.backend.module, t.task, t.dev, t.tokenizer, t.ctx.config.eval.batch_size
    )
    score = metrics[t.task.selection_metric]
    if score > progress.best["score"]:
        progress.best = {"step": step, "score": score, "metrics": metrics}
        adapter = t.backend.adapter_state()  # every rank gathers
        if t.rank == 0:
            extra = {"step": step, "dev": metrics}
            t.backend.module.save_adapter(t.best_dir, extra=extra, state=adapter)
    log.info("step %d dev %s", step, metrics)
    return {f"dev/{k}": v for k, v in metrics.items()}


def check_finite(t: Trainer, loss: float, step: int, progress: Progress) -> None:
    if math.isfinite(loss):
        return
    good = t.checkpointer.complete()
    groups = ", ".join(f"train.lr.{g}" for g in t.ctx.config.train.lr)
    best = (
        f"best adapter so far (step {progress.best['step']}): {t.best_dir}"
        if progress.best["step"] is not None
        else "no adapter kept yet (no dev evaluation before it)"
    )
    raise FloatingPointError(
        f"train loss became {loss} at step {step}; stopped without saving this step. "
        f"Last good checkpoint: {good[-1] if good else 'none'}; {best}. Lower {groups}"
    )


def log_pace(done: int, seconds: float, step: int, train: Any) -> None:
    """Once the loop has run ``done`` steps: the measured pace and what is left at it (it
    replaces the estimate made before the run; the progress bar's ETA follows it)."""
    left = train.steps - step + 1
    evaluations = sum(1 for s in range(step, train.steps + 1) if s % train.eval_every == 0)
    evaluations += train.steps % train.eval_every != 0  # the last step is always scored
    log.info(
        "train: %.2f s/step over the first %d steps: about %s of steps left (%d), plus %d dev "
        "evaluation(s)",
        seconds / done,
        done,
        duration(left * seconds / done),
        left,
        evaluations,
    )


def loop(t: Trainer, progress: Progress) -> None:
    """The optimiser steps from ``progress.start`` to ``train.steps``."""
    train = t.ctx.config.train
    stop = StopFlag()
    tokens, since = 0, time.perf_counter()
    t.backend.module.train()
    steps = range(progress.start, train.steps + 1)
    bar = tqdm(steps, desc="train", unit="step", mininterval=5, disable=t.rank != 0)
    loop_started = time.perf_counter()
    try:
        for step in bar:
            if t.rank == 0 and step - progress.start == PACE_AFTER_STEPS:
                log_pace(step - progress.start, time.perf_counter() - loop_started, step, train)
            micro = next_micro_batches(t)
            tokens += sum(int(b["attention_mask"].sum()) for b in micro) * t.world
            started = time.perf_counter()
            loss, grad_norm = t.backend.train_step(micro)
            progress.step_seconds += time.perf_counter() - started
            progress.timed_steps += 1
            check_finite(t, loss, step, progress)
            record: dict[str, Any] = {}
            if step % train.log_every == 0 or step == train.steps:
                record = {
                    "train/loss": loss,
                    "train/grad_norm": grad_norm,
                    "train/tokens_per_s": tokens / max(time.perf_counter() - since, 1e-9),
                    **{f"train/lr_{k}": v for k, v in t.backend.learning_rates().items()},
                }
                tokens, since = 0, time.perf_counter()
                bar.set_postfix(loss=f"{loss:.4f}")
            if step % train.eval_every == 0 or step == train.steps:
                record.update(evaluate_dev(t, step, progress))
            if record and t.rank == 0:
                t.ctx.log_metrics(record, step)
                with open(t.history_path, "a") as f:
                    f.write(json.dumps({"step": step, **record}) + "\n")
            stopping = any_rank(stop.raised)
            if stopping or step % train.checkpoint_every == 0:
                client = {"stream": list(t.stream.position), "best": progress.best}
                path = t.checkpointer.save(t.backend, step, client)
                if stopping:
                    raise mark_preempted(t.scratch, step, path)
    finally:
        stop.restore()


def finalize(t: Trainer, progress: Progress, seconds: float) -> dict[str, Any]:
    cfg = t.ctx.config
    summary = {
        "method": t.model.config.method,
        "trainable_parameters": t.model.expected_trainable_parameters(),
        "world_size": t.world,
        "steps": cfg.train.steps,
        "resumed_from_step": progress.start - 1 if progress.start > 1 else None,
        "best_step": progress.best["step"],
        f"best_dev_{t.task.selection_metric}": progress.best["score"],
        "seconds": round(seconds, 1),
        "seconds_per_step": round(progress.step_seconds / max(progress.timed_steps, 1), 4),
        "peak_rss_mib": peak_rss_mib(),
    }
    if t.rank == 0:
        out = t.ctx.work_dir
        shutil.copytree(t.best_dir, out / BEST_ADAPTER)
        shutil.copy2(t.history_path, out / HISTORY)
        write_json_atomic(out / SUMMARY, {**summary, "best_dev": progress.best["metrics"]})
        loss_curve(out / HISTORY, out / CURVE)
    return summary


def run(ctx: RunContext) -> dict[str, Any]:
    started = time.perf_counter()
    trainer = setup(ctx)
    try:
        progress = resume(trainer)
        loop(trainer, progress)
        return finalize(trainer, progress, time.perf_counter() - started)
    finally:
        trainer.model.unload()  # evaluate gets the base as loaded (LoRA's layers taken out)


STAGE = Stage(
    name="train",
    run=run,
    upstream=("tokenize", "shard"),
    config_keys=("model", "method", "train", "distributed", "task.name", "eval.batch_size"),
    outputs=(BEST_ADAPTER, HISTORY, SUMMARY),
    tracked={
        SUMMARY: "train",
        HISTORY: "train",
        BEST_ADAPTER: "train/best_adapter",
        CURVE: "plots",
    },
    distributed=True,
)
