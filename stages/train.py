"""Train: fit the soft prompt (+ offset) on the frozen base; keep the best adapter on dev.

Inputs:  tokenize/{train,dev}, shard/shards.json.
Outputs: ``best_adapter/`` (adapter_config.json + adapter_model.safetensors, adapter only),
         ``history.jsonl`` (per-log-step loss, learning rates, tokens/s, dev metrics),
         ``train_summary.json``.
Setup:   load base + tokenizer; wrap with the configured method; a plain PyTorch backend (one
         process) or a DeepSpeed engine (``distributed.deepspeed``; see pipeline/distributed.py
         for the bf16 and 8-bit modes); resume from the newest verified checkpoint of this exact
         stage key, if any.
Run:     ``train.steps`` optimiser steps of ``batch_size × grad_accum × world_size`` rows, two
         learning rates with linear warm-up/decay, gradient clipping; dev evaluation every
         ``eval_every`` steps and at the end (the task's first metric picks the best adapter);
         a checkpoint every ``checkpoint_every`` steps and on SIGTERM/SIGUSR1 (then it stops
         with Preempted, and re-running resumes the exact trajectory).
Cleanup: rank 0 copies history and best adapter into the stage output; other ranks write nothing.
Raises:  FloatingPointError when the loss turns NaN/inf (the last good adapter is kept);
         ValueError for a corrupt checkpoint (checksum mismatch).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from pipeline.distributed import (
    Checkpointer,
    any_rank,
    build_backend,
    dist_env,
    init_process_group,
)
from pipeline.evaluation import evaluate_dataset
from pipeline.methods import wrap
from pipeline.runner import PREEMPTED_MARKER, RunContext, peak_rss_mib, write_json_atomic
from pipeline.scoring import training_batch
from pipeline.tasks import get_task
from pipeline.training import BatchStream, Preempted

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop checkpoints and stops at the next step boundary."""

    def __init__(self) -> None:
        self.raised = False
        self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def read_history(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, train = ctx.config, ctx.config.train
    if cfg.distributed.deepspeed:
        init_process_group()
    rank, world, _ = dist_env()
    task = get_task(cfg.task.name)
    zero3_world = world if cfg.distributed.deepspeed else None
    tokenizer, base = ctx.tokenizer(), ctx.base_model(zero3_world_size=zero3_world)
    torch.manual_seed(train.seed)
    # an int8 base stays outside the engine's module (mode b); otherwise the engine owns it all
    model = wrap(
        base,
        cfg.method_config(base.config.get_text_config()),
        tokenizer,
        register_base=not cfg.model.load_in_8bit,
        shared_prefix=cfg.shared_prefix_in_training,
    )
    backend = build_backend(model, cfg)
    log.info(
        "%s: %d trainable parameters, world size %d",
        model.config.method,
        model.expected_trainable_parameters(),
        world,
    )

    data_dir = ctx.input_dir("tokenize")
    train_rows = datasets.load_from_disk(str(data_dir / "train"))
    contexts, choices, labels = (train_rows[c] for c in ("context_ids", "choice_ids", "label"))
    answers = [choices[i][labels[i]] for i in range(len(labels))]
    dev = datasets.load_from_disk(str(data_dir / "dev"))
    shards = json.loads((ctx.input_dir("shard") / "shards.json").read_text())
    if shards["world_size"] != world:
        raise ValueError(
            f"shard/shards.json was made for {shards['world_size']} ranks, this launch has {world}"
        )
    stream = BatchStream(shards["shards"][rank], train.batch_size, train.seed)
    pad_id = tokenizer.pad_token_id

    scratch = ctx.scratch_dir()
    history_path, best_dir = scratch / "history.jsonl", scratch / "best_adapter"
    if rank == 0:
        (scratch / PREEMPTED_MARKER).unlink(missing_ok=True)
    checkpointer = Checkpointer(scratch, ctx.stage_key)
    state = checkpointer.resume(backend)
    if state:
        start, best = state["step"] + 1, state["best"]
        stream.seek(*state["stream"])
        history = read_history(history_path, state["step"])
    else:
        start, best, history = 1, {"step": None, "score": -math.inf, "metrics": {}}, []
        if rank == 0:
            shutil.rmtree(best_dir, ignore_errors=True)
    if rank == 0:
        history_path.write_text("".join(json.dumps(r) + "\n" for r in history))

    def save_best(step: int, metrics: dict[str, float]) -> None:
        adapter = backend.adapter_state()  # collective under ZeRO-3: every rank gathers
        if rank == 0:
            backend.module.save_adapter(
                best_dir, extra={"step": step, "dev": metrics}, state=adapter
            )

    stop = StopFlag()
    started, tokens_since, time_since = time.perf_counter(), 0, time.perf_counter()
    step_seconds, timed_steps = 0.0, 0  # optimiser steps alone (no dev evaluation or I/O)
    backend.module.train()
    try:
        progress = tqdm(
            range(start, train.steps + 1),
            desc="train",
            unit="step",
            mininterval=5,
            disable=rank != 0,
        )
        for step in progress:
            micro = []
            for _ in range(train.grad_accum):
                ids = next(stream)
                micro.append(
                    training_batch([contexts[i] for i in ids], [answers[i] for i in ids], pad_id)
                )
                tokens_since += int(micro[-1]["attention_mask"].sum()) * world
            step_started = time.perf_counter()
            loss, grad_norm = backend.train_step(micro)
            step_seconds += time.perf_counter() - step_started
            timed_steps += 1
            if not math.isfinite(loss):
                good = checkpointer.complete()
                raise FloatingPointError(
                    f"train loss became {loss} at step {step}; stopped without saving this step. "
                    f"Last good checkpoint: {good[-1] if good else 'none'}; best adapter so far "
                    f"(step {best['step']}): {best_dir}. Lower train.lr_prompt / train.lr_offset"
                )
            record: dict[str, Any] = {}
            if step % train.log_every == 0 or step == train.steps:
                elapsed = time.perf_counter() - time_since
                record = {
                    "train/loss": loss,
                    "train/grad_norm": grad_norm,
                    "train/tokens_per_s": tokens_since / max(elapsed, 1e-9),
                    **{f"train/lr_{k}": v for k, v in backend.learning_rates().items()},
                }
                tokens_since, time_since = 0, time.perf_counter()
                progress.set_postfix(loss=f"{loss:.4f}")
            if step % train.eval_every == 0 or step == train.steps:
                metrics, _ = evaluate_dataset(
                    backend.module, task, dev, pad_id, cfg.eval.batch_size
                )
                record.update({f"dev/{k}": v for k, v in metrics.items()})
                if metrics[task.selection_metric] > best["score"]:
                    best = {
                        "step": step,
                        "score": metrics[task.selection_metric],
                        "metrics": metrics,
                    }
                    save_best(step, metrics)
                log.info("step %d dev %s", step, metrics)
            if record and rank == 0:
                ctx.log_metrics(record, step)
                with open(history_path, "a") as f:
                    f.write(json.dumps({"step": step, **record}) + "\n")
            stopping = any_rank(stop.raised)
            if stopping or step % train.checkpoint_every == 0:
                path = checkpointer.save(
                    backend, step, {"stream": list(stream.position), "best": best}
                )
                if stopping:
                    if rank == 0:
                        write_json_atomic(
                            scratch / PREEMPTED_MARKER, {"step": step, "checkpoint": str(path)}
                        )
                    raise Preempted(step, str(path))
    finally:
        stop.restore()

    summary = {
        "method": model.config.method,
        "trainable_parameters": model.expected_trainable_parameters(),
        "world_size": world,
        "steps": train.steps,
        "resumed_from_step": start - 1 if start > 1 else None,
        "best_step": best["step"],
        f"best_dev_{task.selection_metric}": best["score"],
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_per_step": round(step_seconds / max(timed_steps, 1), 4),
        "peak_rss_mib": peak_rss_mib(),
    }
    if rank == 0:
        shutil.copytree(best_dir, ctx.work_dir / "best_adapter")
        shutil.copy2(history_path, ctx.work_dir / "history.jsonl")
        write_json_atomic(
            ctx.work_dir / "train_summary.json", {**summary, "best_dev": best["metrics"]}
        )
    return summary
