"""The machine a run lands on: model.dtype auto per capability (monkeypatched reports), the
warning for a forced bf16 that is slow here, threads from the cores a process owns, and the
time estimate of `pipeline validate` / `pipeline run`."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.core.config import ConfigError, load_config
from pipeline.engine import estimate, hardware
from pipeline.engine.hardware import resolve_precision, with_resolved_dtype
from pipeline.launch.commands import rank_env
from pipeline.runner import Runner
from pipeline.util import cpus
from stages import PIPELINE
from tests.helpers import write_config

BY_STAGE = {stage.name: stage for stage in PIPELINE}

AVX2 = ("AVX2", {"avx2": True, "cpu_name": "AMD EPYC"})
AVX512 = ("AVX512", {"avx2": True, "avx512_f": True, "cpu_name": "Xeon Skylake"})
AVX512_BF16 = ("AVX512", {"avx512_f": True, "avx512_bf16": True, "cpu_name": "Xeon Cooper"})
AMX = ("AVX512", {"avx512_f": True, "amx_bf16": True, "amx_tile": True, "cpu_name": "Xeon SPR"})
ARM_BF16 = ("SVE256", {"bf16": True, "sve": True, "cpu_name": "Neoverse V1"})


def on_cpu(monkeypatch, report, bf16_ratio: float = 64.0) -> list[int]:
    """This process sees a CPU with ``report`` (capability level, flags) and no CUDA; the bf16
    probe answers ``bf16_ratio``. Returns a list that counts the probe's calls."""
    level, flags = report
    calls: list[int] = []
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: dict(flags))
    monkeypatch.setattr(hardware.torch.backends.cpu, "get_cpu_capability", lambda: level)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda cache=None: calls.append(1) or bf16_ratio)
    return calls


@pytest.mark.parametrize(
    ("report", "ratio", "dtype", "probed"),
    [
        (AVX2, 64.0, "float32", False),
        (AVX512, 20.0, "float32", False),  # AVX-512 without its BF16 extension
        (AVX512_BF16, 0.8, "bfloat16", False),
        (AMX, 0.5, "bfloat16", False),
        (ARM_BF16, 0.7, "bfloat16", True),  # reported, and the probe confirms it
        (ARM_BF16, 3.0, "float32", True),  # reported, but slower than fp32 in the probe
    ],
    ids=["avx2", "avx512", "avx512-bf16", "amx", "arm-bf16-fast", "arm-bf16-slow"],
)
def test_auto_resolves_to_what_the_cpu_computes_natively(monkeypatch, report, ratio, dtype, probed):
    calls = on_cpu(monkeypatch, report, ratio)
    precision = resolve_precision("auto")
    assert precision.dtype == dtype and precision.warning is None
    assert bool(calls) == probed
    assert report[0] in precision.reason


@pytest.mark.parametrize(("bf16", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_auto_on_cuda_follows_the_device(monkeypatch, bf16, dtype) -> None:
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    precision = resolve_precision("auto")
    assert precision.dtype == dtype and "Tesla V100" in precision.reason
    if not bf16:
        assert "fp16 with loss scaling is not verified" in precision.reason
        forced = resolve_precision("bfloat16")
        assert forced.dtype == "bfloat16" and "has no bf16" in forced.warning


def test_forced_bf16_on_a_cpu_without_it_warns_with_the_measured_ratio(monkeypatch) -> None:
    on_cpu(monkeypatch, AVX2, 64.0)
    forced = resolve_precision("bfloat16")
    assert forced.dtype == "bfloat16"  # it still runs as asked
    assert forced.warning == (
        "model.dtype: bfloat16 on a CPU without native bf16 (AVX2): a bf16 matmul runs 64x "
        "slower than fp32 here; use dtype: auto (fp32 on this CPU)"
    )
    assert resolve_precision("float32").warning is None
    on_cpu(monkeypatch, AVX512_BF16, 0.8)
    assert resolve_precision("bfloat16").warning is None


def test_bf16_probe_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch) -> None:
    timed: list[torch.dtype] = []

    def fake_matmul(dtype, repeats=3):
        timed.append(dtype)
        return {torch.bfloat16: 0.6, torch.float32: 0.01}[dtype]

    monkeypatch.setattr(hardware, "_time_matmul", fake_matmul)
    hardware.bf16_slowdown.cache_clear()
    assert hardware.bf16_slowdown(tmp_path) == 60.0
    hardware.bf16_slowdown.cache_clear()  # a new process: read from the file, not measured
    assert hardware.bf16_slowdown(tmp_path) == 60.0
    assert timed == [torch.bfloat16, torch.float32]
    assert list(json.loads((tmp_path / hardware.PROBE_FILE).read_text()).values()) == [60.0]
    hardware.bf16_slowdown.cache_clear()


def test_the_real_matmul_probe_measures_this_cpu() -> None:
    """On this machine: bf16 is at least 1.5x slower than fp32 exactly when the CPU lacks
    native bf16 (the rule that decides whether a forced bf16 is warned about); where PyTorch
    cannot tell (ARM) the probe decides, and either side of the threshold is possible."""
    ratio = hardware._time_matmul(torch.bfloat16) / hardware._time_matmul(torch.float32)
    native = hardware.cpu_has_native_bf16()
    if native is False:
        assert ratio > hardware.BF16_SLOW_RATIO, ratio
    elif native is True:
        assert ratio < hardware.BF16_SLOW_RATIO, ratio
    else:
        pytest.skip(f"no verdict from PyTorch's CPU report; the probe measured {ratio:.2f}x")


def test_resolved_dtype_is_part_of_the_stage_keys_and_config(tmp_path, tiny_model_dir, monkeypatch):
    config = load_config(write_config(tmp_path, tiny_model_dir, model={"dtype": "auto"}))
    keys = {}
    for report, dtype in ((AVX2, "float32"), (AMX, "bfloat16")):
        on_cpu(monkeypatch, report)
        runner = Runner(config)
        assert runner.config.model.compute_dtype == dtype
        assert runner.config.to_dict()["model"]["dtype_resolved"] == dtype
        keys[dtype] = {s: runner.stage_key(stage)[0] for s, stage in BY_STAGE.items()}
    same = [s for s in BY_STAGE if keys["float32"][s] == keys["bfloat16"][s]]
    assert same == ["tokenize", "shard"]  # the data does not depend on the dtype


def test_8bit_under_deepspeed_needs_16_bit_and_says_what_auto_became(tmp_path, tiny_model_dir):
    config = load_config(
        write_config(
            tmp_path,
            tiny_model_dir,
            model={"dtype": "auto", "load_in_8bit": True},
            distributed={"deepspeed": True},
        )
    )
    if resolve_precision("auto").dtype == "bfloat16":
        pytest.skip("this machine computes bf16 natively: auto is 16-bit here")
    with pytest.raises(ConfigError, match=r"set model.dtype: bfloat16 \(model.dtype auto is "):
        with_resolved_dtype(config)


def test_threads_follow_the_cores_the_process_owns(monkeypatch, tmp_path) -> None:
    for variable in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    assert cpus.thread_count() == (8, "8 CPU(s) from the affinity mask")
    assert cpus.thread_count(local_ranks=2)[0] == 4
    (tmp_path / "cpu.max").write_text("300000 100000\n")  # cgroup v2: 3 CPUs of quota
    assert cpus.owned_cpus() == (3, "cgroup CPU quota")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000")  # v1 needs no v2 file
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpus.owned_cpus()[0] == 8  # v2 says no quota and wins
    (tmp_path / "cpu.max").unlink()
    assert cpus.owned_cpus() == (2, "cgroup CPU quota")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpus.owned_cpus() == (1, "SLURM_CPUS_PER_TASK")
    assert rank_env(2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit setting wins
    assert cpus.thread_count(local_ranks=2) == (3, "OMP_NUM_THREADS")
    assert rank_env(2)["OMP_NUM_THREADS"] == "3"


def test_run_logs_its_threads_and_dtype(tmp_path, tiny_model_dir, caplog, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    hardware.announce.cache_clear()
    config = write_config(tmp_path, tiny_model_dir, model={"dtype": "auto"})
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO):
            assert main(["run", str(config), "--stages", "tokenize", "--no-probe"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "CPU threads: 1 (OMP_NUM_THREADS)" in caplog.text
    assert f"model dtype: {resolve_precision('auto').dtype} (auto: " in caplog.text


def sample(rows: dict[str, int], lengths: dict[str, list[int]]) -> estimate.DataSample:
    """A data sample whose rows have the given context lengths and one 1-token answer."""
    encoded = {
        split: {
            "context_ids": [[1] * n for n in values],
            "choice_ids": [[[5], [6]] for _ in values],
            "label": [0] * len(values),
        }
        for split, values in lengths.items()
    }
    return estimate.DataSample(rows, encoded, tokenize_seconds=4.0)


def test_stage_seconds_is_the_documented_arithmetic(tmp_path, tiny_model_dir) -> None:
    config = load_config(
        write_config(
            tmp_path,
            tiny_model_dir,
            train={"steps": 10, "eval_every": 4, "batch_size": 2},
            eval={"batch_size": 2},
        )
    )
    data = sample(
        {"train": 100, "dev": 4, "test": 8},
        {"train": [3, 3], "dev": [1, 3, 1, 3], "test": [1, 3, 1, 3]},
    )
    timings = estimate.Timings(
        load=5.0,
        step=2.0,
        step_tokens=8.0,
        row={
            "dev/adapter": 0.5,
            "test/adapter": 0.5,
            "dev/zero_shot": 0.25,
            "test/zero_shot": 0.25,
        },
        row_tokens={
            "dev/adapter": 3.0,
            "test/adapter": 4.0,
            "dev/zero_shot": 3.0,
            "test/zero_shot": 4.0,
        },
    )
    got = estimate.stage_seconds(config, data, timings)
    # a row is its context plus the 1-token answer: [2, 4, 2, 4] tokens. dev (all 4 rows in
    # the sample) sorted into batches of 2 pads to 2 and 4: 3 per row, as timed (scale 1);
    # evaluations at steps 4, 8 and 10: 3 × 4 rows × 0.5 s
    assert got["train"] == 5.0 + 10 * 2.0 + 3 * 4 * 0.5 + estimate.STAGE_OVERHEAD["train"]
    # test: 8 rows, half of them sampled → the sample's batches hold 1 row: 3 tokens per row,
    # where the timed batches had 4 → scale 3/4
    expected = 8 * 0.5 * 3 / 4 + 8 * 0.25 * 3 / 4 + 4 * 0.25 * 1
    assert got["evaluate"] == pytest.approx(expected + estimate.STAGE_OVERHEAD["evaluate"])
    assert got["tokenize"] == 4.0 + estimate.STAGE_OVERHEAD["tokenize"]


def test_validate_estimates_each_stage_then_reuses_the_probe(
    tmp_path, tiny_model_dir, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(estimate, "machine_load", lambda: 0.0)  # an idle machine
    config = write_config(tmp_path, tiny_model_dir)
    assert main(["validate", str(config)]) == 0
    first = capsys.readouterr().out
    assert "# precision\nmodel.dtype float32 → float32" in first
    line = first.split("# time estimate\n")[1].splitlines()[0]
    assert line.startswith("estimate on this machine (") and "probe just run" in line
    for stage in ("tokenize", "shard", "train", "evaluate", "export"):
        assert f" {stage} " in line
    assert main(["validate", str(config), "--set", "train.steps=8"]) == 0
    assert "probe cached" in capsys.readouterr().out  # the step count is not in the probe key
    assert main(["validate", str(config), "--no-probe"]) == 0
    assert "# time estimate" not in capsys.readouterr().out
    assert (tmp_path / "cache" / estimate.ESTIMATES_FILE).is_file()


def test_a_probe_taken_on_a_busy_machine_says_so_and_is_taken_again_when_idle(
    tmp_path, tiny_model_dir, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    config = str(write_config(tmp_path, tiny_model_dir))
    cpus = os.cpu_count()

    def estimate_line(load: float) -> str:
        monkeypatch.setattr(estimate, "machine_load", lambda: load)
        assert main(["validate", config]) == 0
        return capsys.readouterr().out.split("# time estimate\n")[1].splitlines()[0]

    busy = f"on a busy machine, load {float(cpus):.1f} on {cpus} CPUs: likely high"
    assert f"probe just run {busy}" in estimate_line(cpus)
    line = estimate_line(cpus)
    assert f"probe cached {busy}" in line  # still busy: the probe is kept
    assert re.search(r"; total .+ to .+ \(as probed: .+; the machine is busy now", line), line
    assert "probe just run):" in estimate_line(0.0)  # idle now: taken again
    line = estimate_line(cpus)
    assert "probe cached):" in line  # an idle probe is kept, whatever the load
    assert re.search(r"; total .+ to .+ \(as probed: ", line), line  # busy now: a range
    assert " to " not in estimate_line(0.0)  # idle probe, idle machine: one number


def test_the_estimate_is_a_range_by_the_share_other_work_takes() -> None:
    cpus = os.cpu_count()
    said = estimate.Estimate({"train": 100.0}, {"train": False}, True, {}, "float32")
    assert said.total_range() == (100.0, 100.0)
    said.probe_load, said.load_now = cpus, 0.0  # probed busy, idle now: the probe was high
    assert said.total_range() == (50.0, 100.0)
    said.probe_load, said.load_now = 0.0, cpus / 2  # probed idle, half the CPUs taken now
    assert said.total_range() == (100.0, 150.0)


def test_several_ranks_are_not_estimated(tmp_path, tiny_model_dir) -> None:
    config = load_config(
        write_config(tmp_path, tiny_model_dir, distributed={"nproc_per_node": 2, "deepspeed": True})
    )
    runner = Runner(config)
    said = estimate.estimate_stages(runner.context, runner.plan())
    assert said == "not estimated: the probe times one process, this run has 2 ranks"


def test_estimate_reads_the_cached_tokenize_output(tmp_path, tiny_model_dir) -> None:
    config_file = write_config(tmp_path, tiny_model_dir)
    assert main(["run", str(config_file), "--stages", "tokenize", "--no-probe"]) == 0
    runner = Runner(load_config(config_file))
    tokenized = runner.stage_dir("tokenize")
    data = estimate.sample_data(runner.config, None, tokenized)
    stats = json.loads((Path(tokenized) / "stats.json").read_text())
    assert data.rows == {s: stats[s]["rows"] for s in ("train", "dev", "test")}
    assert data.tokenize_seconds == 0.0
    assert len(data.encoded["train"]["context_ids"]) == min(estimate.SAMPLE_ROWS, 32)


def test_the_measured_pace_takes_over_from_the_estimate(caplog) -> None:
    """Ten steps in, the train loop says its own pace and what is left at it."""
    from types import SimpleNamespace

    from stages.train import log_pace

    train = SimpleNamespace(steps=300, eval_every=50)
    with caplog.at_level(logging.INFO, logger="stages.train"):
        log_pace(10, 20.0, 11, train)  # 10 steps took 20 s; step 11 is next
    assert (
        "train: 2.00 s/step over the first 10 steps: about 9 min 40 s of steps left (290), plus "
        "6 dev evaluation(s)" in caplog.text
    )
