"""End to end: all five stages on a tiny Gemma-3 (real tokenizer) and small slices of real data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.core.stage import read_manifest
from pipeline.engine.batches import read_shard
from pipeline.runner import BY_NAME, Runner
from pipeline.util.files import checksum_tree
from tests.helpers import (
    REPO,
    assert_accuracy_is_its_predictions,
    write_boolq_rows,
    write_config,
)

STAGE_NAMES = ["tokenize", "shard", "train", "evaluate", "export"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = write_config(tmp, tiny_model_dir, task={"dev_limit": DEV_ROWS})  # dev ≠ test rows
    assert main(["run", str(config)]) == 0
    return config, tmp / "runs" / "tiny"


DEV_ROWS = 10  # the test split has 12: a metric computed on the wrong split shows


def bare_base_predictions(run, split: str) -> tuple[list[int], list[int]]:
    """(predicted, gold) per row of a tokenized split, scored by the plain transformers base
    model the run names (no adapter, no pipeline scoring code): each choice's summed
    log-probability after the context, one row and choice at a time."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    resolved = json.loads((run / "config.resolved.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(resolved["model"]["source"]).eval()
    rows = datasets.load_from_disk(str(run / "tokenize" / split))
    predicted = []
    for context, choices in zip(rows["context_ids"], rows["choice_ids"], strict=True):
        scores = []
        for choice in choices:
            ids = torch.tensor([context + choice])
            with torch.no_grad():
                logprobs = base(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, len(context) :]
            scores.append(logprobs[len(context) - 1 :].gather(1, targets[:, None]).sum().item())
        predicted.append(max(range(len(scores)), key=scores.__getitem__))
    return predicted, list(rows["label"])


def bare_base_accuracy(run, split: str) -> float:
    predicted, gold = bare_base_predictions(run, split)
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def test_zero_shot_is_the_bare_base_model_and_not_the_adapter(finished_run) -> None:
    """Zero-shot's test accuracy is the base model's alone, recomputed with plain transformers;
    the trained adapter predicts differently on these rows (so an evaluate that scored
    zero-shot with the adapter on would fail here)."""
    _, run = finished_run
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    predicted, _ = bare_base_predictions(run, "test")
    assert metrics["zero_shot"]["accuracy"] == bare_base_accuracy(run, "test")
    assert metrics["zero_shot"]["accuracy"] != metrics["adapter"]["accuracy"]
    lines = (run / "evaluate" / "predictions.jsonl").read_text().splitlines()
    adapter = [json.loads(x)["predicted"] for x in lines]
    assert adapter != predicted


def padding_of_shards(run) -> float:
    """Padded share of the token slots of the train batches in the shard stage's own
    ``shards.npy`` (one rank), each batch padded to its longest row: context + gold answer."""
    import datasets
    import numpy as np

    train = datasets.load_from_disk(str(run / "tokenize" / "train"))
    lengths = [
        len(context) + len(choices[label])
        for context, choices, label in zip(
            train["context_ids"], train["choice_ids"], train["label"], strict=True
        )
    ]
    [order] = np.load(run / "shard" / "shards.npy")
    batch = json.loads((run / "shard" / "shards.json").read_text())["batch_size"]
    slots = padded = 0
    for start in range(0, len(order), batch):
        rows = [lengths[i] for i in order[start : start + batch]]
        slots += max(rows) * len(rows)
        padded += max(rows) * len(rows) - sum(rows)
    return padded / slots


def test_length_grouping_reaches_the_shard_stage(tmp_path, tiny_model_dir) -> None:
    """The stage's own shards.npy with ``group_by_length`` pads far less than the same rows in
    plain shuffled order (BoolQ's passages vary in length)."""
    config = write_config(tmp_path, tiny_model_dir, task={"train_limit": 400, "max_length": 256})
    run = tmp_path / "runs" / "tiny"
    assert main(["run", str(config), "--stages", "tokenize,shard"]) == 0
    plain = padding_of_shards(run)
    grouped = ["--set", "train.group_by_length=true"]
    assert main(["run", str(config), "--stages", "shard", *grouped]) == 0
    assert padding_of_shards(run) < plain / 3, (padding_of_shards(run), plain)


def statuses(capsys) -> dict[str, str]:
    out = capsys.readouterr().out
    return {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.strip() and line.split()[0] in STAGE_NAMES
    }


def test_all_stages_write_outputs_and_manifests(finished_run) -> None:
    _, run = finished_run
    for stage in STAGE_NAMES:
        manifest = read_manifest(run / stage)
        assert manifest is not None, stage
        assert manifest["outputs"] == checksum_tree(run / stage), stage
    for split in ("train", "dev", "test"):
        assert (run / "tokenize" / split / "dataset_info.json").is_file()
    stats = json.loads((run / "tokenize" / "stats.json").read_text())
    assert (stats["train"]["rows"], stats["dev"]["rows"], stats["test"]["rows"]) == (32, 10, 12)
    assert sorted(read_shard(run / "shard", 0, 1).tolist()) == list(range(32))
    history = [json.loads(x) for x in (run / "train" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all("train/loss" in h and "train/lr_prompt" in h for h in history)
    assert "dev/accuracy" in history[1] and "dev/accuracy" in history[3]
    adapter = run / "train" / "best_adapter"
    assert sorted(p.name for p in adapter.iterdir()) == [  # ADePT: PEFT has no such method
        "adapter_model.safetensors",
        "pipeline_adapter.json",
    ]
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["rows"] == 12
    assert_accuracy_is_its_predictions(run)
    assert metrics["dev_zero_shot"]["accuracy"] == bare_base_accuracy(run, "dev")
    timing = json.loads((run / "evaluate" / "timing.json").read_text())
    assert timing["peak_rss_mib"] > 100  # torch + the tiny model: a real process measurement
    predictions = (run / "evaluate" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 12
    task = json.loads((run / "export" / "task.json").read_text())
    assert task["task"] == "boolq" and task["choices"] == [" no", " yes"]
    assert (run / "export" / "adapter" / "adapter_model.safetensors").is_file()


def test_rerun_is_cached_force_reruns(finished_run, capsys) -> None:
    config, run = finished_run
    before = {s: read_manifest(run / s)["finished_at"] for s in STAGE_NAMES}
    capsys.readouterr()
    assert main(["run", str(config)]) == 0
    assert statuses(capsys) == dict.fromkeys(STAGE_NAMES, "cached")
    assert {s: read_manifest(run / s)["finished_at"] for s in STAGE_NAMES} == before
    assert main(["run", str(config), "--stages", "shard,train", "--force"]) == 0
    assert statuses(capsys) == {"shard": "ran", "train": "ran"}


def test_set_override_reruns_only_dependent_stages(finished_run, capsys) -> None:
    config, run = finished_run
    capsys.readouterr()
    assert main(["run", str(config), "--set", "train.lr.prompt=0.01"]) == 0
    assert statuses(capsys) == {
        "tokenize": "cached",
        "shard": "cached",
        "train": "ran",
        "evaluate": "ran",
        "export": "ran",
    }
    resolved = json.loads((run / "config.resolved.json").read_text())
    assert resolved["train"]["lr"]["prompt"] == 0.01


def test_stage_version_reruns_outputs_of_older_code(finished_run) -> None:
    """Raising a stage's version misses its cache; version 1 keys are the keys stages had before
    versions existed (config values + upstream digests), so those caches stay valid."""
    config, _ = finished_run
    runner = Runner(load_config(config))
    tokenize = BY_NAME["tokenize"]
    assert runner.is_cached(tokenize) and tokenize.version == 3
    raised = dataclasses.replace(tokenize, version=4)
    assert runner.stage_key(raised)[0] != runner.stage_key(tokenize)[0]
    assert not runner.is_cached(raised)
    evaluate = BY_NAME["evaluate"]
    assert evaluate.version == 1 and runner.is_cached(evaluate)
    key, inputs = runner.stage_key(evaluate)
    config_values = evaluate.key_inputs(runner.config)
    unversioned = {"stage": "evaluate", "config": config_values, "inputs": inputs}
    blob = json.dumps(unversioned, sort_keys=True).encode()
    assert key == hashlib.sha256(blob).hexdigest()[:16]


def test_evaluate_alone_from_saved_outputs(finished_run, capsys) -> None:
    config, run = finished_run
    main(["run", str(config)])  # settle on the file's own config
    before = json.loads((run / "evaluate" / "metrics.json").read_text())
    shutil.rmtree(run / "evaluate")
    capsys.readouterr()
    assert main(["run", str(config), "--stages", "evaluate"]) == 0
    assert statuses(capsys) == {"evaluate": "ran"}
    assert json.loads((run / "evaluate" / "metrics.json").read_text()) == before


def test_stage_without_inputs_names_the_missing_stage(tmp_path, tiny_model_dir, capsys) -> None:
    config = write_config(tmp_path, tiny_model_dir)
    assert main(["run", str(config), "--stages", "evaluate"]) == 2
    err = capsys.readouterr().err
    assert "needs the output of 'tokenize'" in err and "--stages tokenize" in err
    assert not (tmp_path / "runs" / "tiny" / "evaluate").exists()
    assert not list((tmp_path / "runs" / "tiny").glob(".evaluate.*"))  # no half-written output


def test_predict_matches_evaluate_scores(finished_run, tmp_path, data_dir) -> None:
    config, run = finished_run
    main(["run", str(config)])
    inputs = write_boolq_rows(tmp_path / "rows.jsonl", data_dir, 3)
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(run), "--input", str(inputs), "--output", str(out)]) == 0
    predicted = [json.loads(x) for x in out.read_text().splitlines()]
    evaluated = [
        json.loads(x) for x in (run / "evaluate" / "predictions.jsonl").read_text().splitlines()[:3]
    ]
    for p, e in zip(predicted, evaluated, strict=True):
        assert p["label"] in ("no", "yes")
        assert list(p["scores"].values()) == pytest.approx(e["scores"], abs=1e-5)
        assert p["label_index"] == e["predicted"]


def test_validate_llama7b_plans_offline(capsys) -> None:
    assert main(["validate", str(REPO / "configs" / "llama7b_boolq.yaml")]) == 0
    out = capsys.readouterr().out
    assert "m=60 r=19 trainable=405,523 PT budget=409,600" in out
    assert "6,738,415,616 params" in out and "built-in spec" in out
    assert "optimizer state per rank" in out and "world size 8" in out
    plan = re.findall(r"^(tokenize|shard|train|evaluate|export)\s+(run|cached)$", out, re.M)
    assert plan == [(s, "run") for s in STAGE_NAMES]


def test_every_shipped_config_validates(capsys) -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert main(["validate", str(path), "--no-probe"]) == 0, path
    for path in sorted((REPO / "configs" / "studies").glob("*.yaml")):
        assert main(["compare", str(path), "--dry-run"]) == 0, path  # validates every job


def test_config_errors_exit_2_with_key_path(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  steps: fast\n  stepz: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "train.steps: expected int, got 'fast'" in proc.stderr
    assert "train.stepz: unknown key" in proc.stderr


def test_sweep_prints_a_command_that_creates_the_log_directory(tmp_path, tiny_model_dir, capsys):
    """sbatch needs logs/ to exist before the job starts (else it fails with no log at all), so
    the printed command makes it."""
    config = write_config(tmp_path, tiny_model_dir)
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "sweep": {"train.seed": [1, 2, 3]}}))
    assert main(["sweep", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        f"mkdir -p logs && sbatch --array=0-2 --output='logs/%x_%A_%a.out' "
        f"slurm/train_llama.sh {config}" in out
    )
