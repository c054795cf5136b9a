"""Real DeepSpeed on 2 CPU ranks (gloo) with tiny models: ZeRO-3 equivalence, partitioning,
the 8-bit mode, checkpoints, signal-driven interruption and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.helpers import (
    ENV,
    REPO,
    losses,
    pipeline,
    start_pipeline,
    tracked_losses,
    wait_for_step,
    write_config,
)


def dist_config(tmp: Path, model_dir: Path, world: int, batch: int, steps: int = 4, **extra):
    sections = {
        "method": {"dropout": 0.0},
        "train": {
            "steps": steps,
            "batch_size": batch,
            "eval_every": steps,
            "log_every": 1,
            "checkpoint_every": 2,
            "lr": {"prompt": 0.05, "offset": 0.01},
        },
        "distributed": {"nproc_per_node": world, "deepspeed": world > 1, "zero_stage": 3},
        "tracking": {"uri": None},
        "export": {"register_model": False},
    }
    for key, value in extra.items():
        sections.setdefault(key, {}).update(value)
    return write_config(tmp, model_dir, **sections)


def test_zero3_two_ranks_matches_one_process(tmp_path, tiny_model_dir) -> None:
    """ZeRO-3 on 2 ranks with the shared prompt prefix follows the same fp32 trajectory as one
    process computing the prompt for every row; with length-grouped batches too."""
    grouped = {"group_by_length": True}
    single = dist_config(
        tmp_path / "one", tiny_model_dir, world=1, batch=8, model={"shared_prefix": False},
        train=grouped,
    )  # fmt: skip
    double = dist_config(
        tmp_path / "two", tiny_model_dir, world=2, batch=4, model={"shared_prefix": True},
        train=grouped,
    )  # fmt: skip
    stages = ["--stages", "tokenize,shard,train"]
    for config in (single, double):
        proc = pipeline("run", str(config), *stages)
        assert proc.returncode == 0, proc.stderr[-4000:]
    # only rank 0 logs progress and writes: one dev line, one history line and one tracked
    # point a step; every rank says once where it runs
    assert proc.stderr.count("step 4 dev") == 1
    assert proc.stderr.count("rank 0 of 2") == proc.stderr.count("rank 1 of 2") == 1
    run_two = tmp_path / "two" / "runs" / "tiny"
    assert tracked_losses(run_two) == list(enumerate(losses(run_two), start=1))
    one, two = (
        losses(tmp_path / "one" / "runs" / "tiny"),
        losses(tmp_path / "two" / "runs" / "tiny"),
    )
    assert len(one) == len(two) == 4
    # same global batch of 8 rows per step; differences are float reduction order only
    assert two == pytest.approx(one, abs=1e-6), (one, two)
    assert one[-1] != one[0]
    ckpt = tmp_path / "two" / "runs" / "tiny" / ".scratch" / "train" / "checkpoints"
    latest = sorted(ckpt.glob("step_*"))[-1]
    size = sum(p.stat().st_size for p in latest.rglob("*") if p.is_file())
    assert size < 2_000_000  # adapter + optimiser only: the frozen 16.8M-param model is excluded
    assert (latest / "checksums.json").is_file() and (latest / "rng_rank1.safetensors").is_file()


@pytest.mark.parametrize("mode", ["bf16", "int8", "offload"])
def test_zero3_partitions_per_rank(tmp_path, tiny_model_dir, mode) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "tests" / "dist_probe.py"),
            str(tiny_model_dir),
            str(tmp_path),
            mode,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    trainable = ranks[0]["trainable"]
    for info in ranks:
        assert abs(info["optimizer_partition_elements"] - trainable / 2) <= 1
        assert all(info["adapter_changed"].values()), info["adapter_changed"]
        assert all(v == v for v in info["losses"])  # finite
        # bf16 compute: the prompt run at batch 1 vs batch 2 rounds differently, nothing more
        assert info["forward_loss"]["true"] == pytest.approx(
            info["forward_loss"]["false"], rel=2e-3
        ), info["forward_loss"]
    if mode in ("bf16", "offload"):  # mode (a): frozen weights partitioned, about half per rank
        for info in ranks:
            assert abs(info["frozen_local_elements"] / info["frozen_total_elements"] - 0.5) < 0.01
            # partitioned as it loaded (zero.Init): no rank ever held the whole model
            assert info["held_at_load_elements"] <= info["frozen_total_elements"] / 2 + 1000
        assert any(n.startswith("base.") for n in ranks[0]["engine_param_names"])
    else:  # mode (b): the int8 base is outside the engine, replicated, unchanged
        for info in ranks:
            assert info["engine_param_names"] == [
                "offset.down.bias",
                "offset.down.weight",
                "offset.up.bias",
                "offset.up.weight",
                "soft_prompt.weight",
            ]
            assert info["int8_layers"] > 0 and info["base_unchanged"] is True
            assert info["frozen_total_elements"] == 0


@pytest.mark.parametrize("world", [1, 2])
def test_signal_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, world) -> None:
    """Exact resume; the two-rank case with length-grouped batches."""
    steps = 30 if world == 1 else 12
    settings = {"task": {"train_limit": 64}, "train": {"group_by_length": world == 2}}
    ref = dist_config(
        tmp_path / "ref", tiny_model_dir, world=world, batch=2, steps=steps, **settings
    )
    run = dist_config(
        tmp_path / "cut", tiny_model_dir, world=world, batch=2, steps=steps, **settings
    )
    stages = ["--stages", "tokenize,shard,train"]
    assert main(["run", str(ref), *stages]) == 0  # in this process: no start-up to pay
    run_dir = tmp_path / "cut" / "runs" / "tiny"
    proc = start_pipeline("run", str(run), *stages, stderr=subprocess.PIPE)
    wait_for_step(run_dir / ".scratch" / "train" / "history.jsonl", 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # as Slurm does: the whole process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    assert "preempted" in err and "checkpoint" in err
    assert not (run_dir / "train").exists()  # no half-written stage output
    assert main(["run", str(run), *stages]) == 0  # resumes
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] < steps
    expected = losses(tmp_path / "ref" / "runs" / "tiny")
    tolerance = 0 if world == 1 else 1e-6
    assert losses(run_dir) == pytest.approx(expected, abs=tolerance)
    ref_adapter = tmp_path / "ref" / "runs" / "tiny" / "train" / "best_adapter"
    assert (run_dir / "train" / "best_adapter" / "adapter_model.safetensors").read_bytes() == (
        ref_adapter / "adapter_model.safetensors"
    ).read_bytes()


def test_validate_reports_deepspeed_plan_and_rejects_bad_combos(tmp_path, tiny_model_dir):
    config = dist_config(tmp_path, tiny_model_dir, world=2, batch=4)
    proc = pipeline("validate", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "zero stage 3, global batch 8 = 4 micro × 1 accumulation × 2 ranks" in proc.stdout
    assert "mode a: whole model under ZeRO" in proc.stdout
    bad = pipeline("validate", str(config), "--set", "distributed.deepspeed=false")
    assert bad.returncode == 2 and "need distributed.deepspeed: true" in bad.stderr
    bad = pipeline("validate", str(config), "--set", "model.load_in_8bit=true")
    assert bad.returncode == 2 and "set model.dtype: bfloat16" in bad.stderr


@pytest.mark.slow
def test_gemma_zero3_two_ranks(tmp_path, data_dir) -> None:
    config = write_config(
        tmp_path,
        Path("gemma3-270m"),
        model={"source": "gemma3-270m", "dtype": "auto"},  # bf16 only where it is native
        method={"num_virtual_tokens": 60, "budget_tokens": 100},
        task={"name": "sst2", "max_length": 64, "train_limit": 64, "dev_limit": 8, "test_limit": 8},
        train={
            "steps": 3,
            "batch_size": 2,
            "eval_every": 3,
            "lr": {"prompt": 0.03, "offset": 0.001},
        },
        distributed={"nproc_per_node": 2, "deepspeed": True},
        export={"register_model": False},
    )
    proc = pipeline("run", str(config), "--stages", "tokenize,shard,train")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "train" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["trainable_parameters"] == 63_379
    assert all(x == x for x in losses(run))
