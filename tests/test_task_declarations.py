"""Tasks declared in YAML: the built-in ones, a user's own file or inline spec, bad declarations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.core.yaml_files import ConfigError
from pipeline.engine.predict import Predictor
from pipeline.tasks import TASKS, DataError, Encoder, load_task_splits, parse_task
from pipeline.tasks.registry import BUILTIN_DIR
from tests.helpers import write_config

REVIEWS = [
    ("A warm, funny film.", "pos"),
    ("Dull and far too long.", "neg"),
    ("I loved every minute.", "pos"),
    ("The plot makes no sense, sadly.", "neg"),
]


def review_task(data: Path) -> dict:
    """A user's task: CSV train, JSONL dev, Parquet test, explicit splits, its own labels."""
    import datasets

    data.mkdir(parents=True, exist_ok=True)
    lines = ["text,verdict"] + [f'"{text}",{label}' for text, label in REVIEWS * 4]
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    (data / "dev.jsonl").write_text(
        "".join(json.dumps({"text": t, "verdict": v}) + "\n" for t, v in REVIEWS)
    )
    rows = {"text": [t for t, _ in REVIEWS] * 2, "verdict": [v for _, v in REVIEWS] * 2}
    datasets.Dataset.from_dict(rows).to_parquet(str(data / "test.parquet"))
    return {
        "name": "reviews",
        "template": "Review: {text}\nSentiment:",
        "choices": [" bad", " good"],
        "label": {"field": "verdict", "map": {"neg": 0, "pos": 1}},
        "metrics": ["accuracy", "f1"],
        "protocol": "explicit",
        "truncate_field": "text",
        "files": {
            "train": {"path": str(data / "train.csv")},
            "dev": {"path": str(data / "dev.jsonl")},
            "test": {"path": str(data / "test.parquet")},
        },
    }


def test_builtin_tasks_are_yaml_declarations() -> None:
    files = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
    assert files == sorted(TASKS) and len(files) == 10  # nine GLUE/SuperGLUE + SQuAD
    copa = TASKS["copa"]
    row = copa.normalise(
        {
            "premise": "The man fell.",
            "question": "cause",
            "choice1": "He slipped.",
            "choice2": "He sang.",
            "label": 0,
            "_line": 1,
        },
        "x",
    )
    assert copa.context(row) == "The man fell because"
    assert copa.choices_for(row) == [" he slipped.", " he sang."]
    stsb = TASKS["stsb"]
    assert stsb.label_of({"score": "3.6"}, "x") == 4 and stsb.gold_of({"score": "3.6"}, 4) == 3.6
    assert TASKS["boolq"].label_of({"answer": True}, "x") == 1
    assert TASKS["boolq"].label_of({"label": "False"}, "x") == 0


def test_a_user_task_reads_csv_jsonl_parquet(tmp_path, gemma_tokenizer) -> None:
    task = parse_task(review_task(tmp_path / "data"), "test")
    splits = load_task_splits(task, None, {})
    assert [len(splits[s][0]) for s in ("train", "dev", "test")] == [16, 4, 8]
    assert splits["test"][1].endswith("test.parquet") and splits["test"][0][2]["_line"] == 3
    encoded = Encoder(task, gemma_tokenizer, 64).encode(*splits["dev"])
    assert encoded["label"] == [1, 0, 1, 0]
    text = gemma_tokenizer.decode(encoded["context_ids"][1], skip_special_tokens=True)
    assert text == "Review: Dull and far too long.\nSentiment:"


def test_a_task_file_runs_end_to_end_and_predicts(tmp_path, tiny_model_dir) -> None:
    """A classification task declared only in YAML: all five stages, the task's own metrics,
    and the export predicts with the declaration it carries (no registry entry)."""
    task_file = tmp_path / "reviews.yaml"
    task_file.write_text(yaml.safe_dump(review_task(tmp_path / "data")))
    task = {"name": "reviews", "file": str(task_file), "max_length": 64}
    task.update(train_limit=None, dev_limit=None, test_limit=None)
    config = write_config(tmp_path, tiny_model_dir, task=task, tracking={"uri": None})
    assert main(["run", str(config)]) == 0
    run = tmp_path / "runs" / "tiny"
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["rows"] == 8 and set(metrics["adapter"]) == {"accuracy", "f1"}
    exported = json.loads((run / "export" / "task.json").read_text())
    assert exported["task_spec"]["name"] == "reviews" and exported["choices"] == [" bad", " good"]
    assert "reviews" not in TASKS
    predictions = Predictor(run).predict([{"text": "What a great film."}])
    assert predictions[0]["label"] in ("bad", "good")


def test_a_task_file_and_the_same_inline_spec_are_one_config(tmp_path, tiny_model_dir) -> None:
    spec = review_task(tmp_path / "data")
    task_file = tmp_path / "reviews.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    from_file = load_config(
        write_config(
            tmp_path / "a", tiny_model_dir, task={"name": "reviews", "file": str(task_file)}
        )
    )
    inline = load_config(
        write_config(tmp_path / "b", tiny_model_dir, task={"name": "reviews", "spec": spec})
    )
    assert from_file.task.name == inline.task.name == "reviews"
    assert from_file.section_hash("task") == inline.section_hash("task")
    assert from_file.task.definition() == inline.task.definition()


BAD = {
    "unknown_key": (
        lambda spec: {**spec, "tempalte": "x"},
        r"task file .*reviews\.yaml: tempalte: Extra inputs are not permitted",
    ),
    "missing_label": (
        lambda spec: {k: v for k, v in spec.items() if k != "label"},
        r"task file .*reviews\.yaml: label: required for a classification task",
    ),
    "unknown_metric": (
        lambda spec: {**spec, "metrics": ["accuracy", "bleu"]},
        r"metrics: unknown \['bleu'\]",
    ),
    "missing_split_file": (
        lambda spec: {**spec, "files": {"train": spec["files"]["train"]}},
        r"files: protocol explicit needs exactly \['train', 'dev', 'test'\]",
    ),
    "truncate_not_in_template": (
        lambda spec: {**spec, "truncate_field": "title"},
        r"truncate_field: 'title' is not in the template",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_declarations_name_the_file_and_key(case, tmp_path, tiny_model_dir) -> None:
    change, expected = BAD[case]
    task_file = tmp_path / "reviews.yaml"
    task_file.write_text(yaml.safe_dump(change(review_task(tmp_path / "data"))))
    config = write_config(
        tmp_path, tiny_model_dir, task={"name": "reviews", "file": str(task_file)}
    )
    with pytest.raises(ConfigError, match=expected):
        load_config(config)


def test_bad_data_for_a_declared_task(tmp_path) -> None:
    """A template field the rows lack, and an empty file: one line naming file and line."""
    spec = review_task(tmp_path / "data")
    spec["template"] = "Review: {text} ({stars} stars)\nSentiment:"
    task = parse_task(spec, "test")
    with pytest.raises(
        DataError, match=r"template names \['stars'\], a field no row of .*train\.csv"
    ):
        Encoder(task, None, 64).encode(*load_task_splits(task, None, {})["train"])
    task = parse_task(review_task(tmp_path / "data"), "test")  # (re)writes the data files
    (tmp_path / "data" / "dev.jsonl").write_text("")
    with pytest.raises(DataError, match=r"task reviews: split dev is empty \(.*dev\.jsonl\)"):
        load_task_splits(task, None, {})
