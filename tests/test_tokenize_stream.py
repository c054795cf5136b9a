"""The streamed tokenize stage: the same splits as the in-memory stage wrote before it, for any
number of processes, chunk, bucket and file size; hub data read in batches like a file."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest
import yaml

import pipeline.tasks.encoded as encoded
import stages.tokenize as tokenize_stage
from pipeline.core.config import load_config
from pipeline.runner import BY_NAME, Runner
from pipeline.tasks import DataError, get_task, load_task_splits, plan_splits
from tests.helpers import REPO, split_digest

DIGESTS = json.loads((REPO / "tests" / "fixtures" / "tokenize_digests.json").read_text())
TASKS = sorted(name for name in DIGESTS if not name.startswith("_"))


def tokenize(tmp_path: Path, tokenizer, task: dict) -> Path:
    """Run the tokenize stage alone for a config naming only ``task``; its output directory."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "output_dir": str(tmp_path), "task": task}))
    runner = Runner(load_config(config), track=False)
    runner.context.memo("tokenizer", lambda: tokenizer)
    [result] = runner.run(("tokenize",))
    assert result.status == "ran"
    return next(tmp_path.rglob("tokenize/stats.json")).parent


@pytest.fixture
def small_pieces(monkeypatch) -> None:
    """Chunks, ordering buckets and Arrow files far smaller than the splits, so every split
    crosses their boundaries (a shuffled split arrives in every bucket many times)."""
    monkeypatch.setattr(tokenize_stage, "CHUNK_ROWS", 700)
    monkeypatch.setattr(tokenize_stage, "bucket_rows", lambda max_length: 1_000)
    monkeypatch.setattr(encoded, "ROWS_PER_FILE", 20_000)


@pytest.mark.parametrize(
    "task,num_proc", [*((t, 2) for t in TASKS), ("sst2", 1), ("squad", 1), ("boolq", 1)]
)
def test_every_split_is_what_the_in_memory_stage_wrote(
    task, num_proc, tmp_path, data_dir, gemma_tokenizer, small_pieces
) -> None:
    out = tokenize(
        tmp_path, gemma_tokenizer, {"name": task, "data_dir": str(data_dir), "num_proc": num_proc}
    )
    for split in ("train", "dev", "test"):
        assert split_digest(out / split) == DIGESTS[task][split], (task, split)
    train_files = sorted(p.name for p in (out / "train").glob("*.arrow"))
    rows = DIGESTS[task]["train"]["rows"]
    assert len(train_files) == -(-rows // 20_000)  # SST-2's 66,349 rows: four files
    assert not list(out.rglob("_buckets"))  # no scratch left in the outputs
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["rows"] == rows


def test_num_proc_changes_no_stage_key_and_not_the_config_hash(tmp_path) -> None:
    """How many processes tokenize is left out of every key, the whole-config ones (train,
    export) included: changing it re-runs nothing."""
    keys = []
    for num_proc in (None, 1, 4):
        config = tmp_path / f"c{num_proc}.yaml"
        task = {"name": "rte"} if num_proc is None else {"name": "rte", "num_proc": num_proc}
        config.write_text(yaml.safe_dump({"name": "t", "output_dir": str(tmp_path), "task": task}))
        runner = Runner(load_config(config), track=False)
        stage_keys = [runner.stage_key(stage)[0] for stage in BY_NAME.values()]
        keys.append((runner.config.config_hash, *stage_keys))
    assert len(set(keys)) == 1, keys


def test_the_split_plan_reads_only_the_rows_a_limit_keeps(data_dir) -> None:
    """Limits are applied to the plan, not to rows read: the same rows as the full protocol
    split cut afterwards, and rows no split takes are never returned."""
    task = get_task("sst2")
    full = plan_splits(task, data_dir, {})
    cut = plan_splits(task, data_dir, {"train": 50, "dev": 7})
    assert cut.sizes == {"train": 50, "dev": 7, "test": 872}
    for split, n in cut.sizes.items():
        assert np.array_equal(cut.order[split][1], full.order[split][1][:n])
    rows = load_task_splits(cut)
    whole = load_task_splits(task, data_dir, {})
    for split, n in cut.sizes.items():
        assert rows[split][0] == whole[split][0][:n]


def test_a_hub_dataset_is_read_in_batches_like_its_file(
    tmp_path, data_dir, gemma_tokenizer, monkeypatch
) -> None:
    """No network in tests: the hub download is replaced by the same rows as a local
    ``datasets`` dataset (what ``load_dataset`` leaves in its cache); the stage must split and
    encode it exactly as the file (only ``line`` differs: the hub's row number)."""
    task = get_task("sst2")
    hub = datasets.DatasetDict()
    for split in ("train", "validation"):
        rows = [
            {k: v for k, v in r.items() if k != "_line"} for r in task.files[split].read(data_dir)
        ]
        hub[split] = datasets.Dataset.from_list(rows)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None: hub)
    monkeypatch.delenv("PIPELINE_DATA_DIR")
    from_hub = tokenize(tmp_path / "hub", gemma_tokenizer, {"name": "sst2", "test_limit": 300})
    from_file = tokenize(
        tmp_path / "file",
        gemma_tokenizer,
        {"name": "sst2", "test_limit": 300, "data_dir": str(data_dir)},
    )
    for split in ("train", "dev", "test"):
        a, b = (datasets.load_from_disk(str(d / split)) for d in (from_hub, from_file))
        columns = [c for c in a.column_names if c != "line"]
        assert a.select_columns(columns)[:] == b.select_columns(columns)[:], split


def test_a_bad_row_found_by_a_worker_names_its_line_and_stops_the_workers(
    tmp_path, gemma_tokenizer, small_pieces
) -> None:
    rows = [{"sentence": f"row {i} was fine", "label": i % 2} for i in range(9_000)]
    rows[8_123]["label"] = 7  # line 8124
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "lines",
        "template": "{sentence}\nAnswer:",
        "choices": [" no", " yes"],
        "label": {"field": "label", "map": {"0": 0, "1": 1}},
        "metrics": ["accuracy"],
        "protocol": "explicit",
        "files": {"train": {"path": str(data)}, "dev": {"path": str(data)}},
    }
    spec["files"]["test"] = spec["files"]["dev"]
    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(DataError, match=f"{data}: line 8124: label 7 is not one of"):
        tokenize(tmp_path / "run", gemma_tokenizer, {"name": "lines", "spec": spec, "num_proc": 2})
    assert set(psutil.Process().children(recursive=True)) == before
