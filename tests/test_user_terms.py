"""What a user gets back, in their own terms: predictions carry the task's label values and each
row's line and fields as the user's file writes them; `pipeline predict` takes the file's own
column names and checks its input before any model loads; an adapter worse than zero-shot on
dev is said so; a default run's log holds no library chatter."""

from __future__ import annotations

import json
import logging

import mlflow
import pytest
import yaml

from pipeline.cli import main
from tests.helpers import pipeline, write_config

CSV_HEADER = "Passage Text,claim,verdict\n"
CSV_ROWS = [
    ("A man is sleeping on a couch.", "A man rests.", "holds"),
    ("A dog runs in the park.", "A cat flies over the sea.", "fails"),
] * 6


@pytest.fixture(scope="module")
def own_csv_run(tmp_path_factory, tiny_model_dir):
    """An RTE-like task the user wrote as CSV with their own column names and label words."""
    tmp = tmp_path_factory.mktemp("own-csv")
    for split in ("train", "dev", "test"):
        body = "".join(f'"{p}","{c}",{v}\n' for p, c, v in CSV_ROWS)
        (tmp / f"{split}.csv").write_text(CSV_HEADER + body)
    rename = {"Passage Text": "premise", "claim": "hypothesis"}
    task = {
        "name": "claims",
        "template": "{premise}\nQuestion: {hypothesis}? Yes or no?\nAnswer:",
        "choices": [" yes", " no"],
        "label": {"field": "verdict", "map": {"holds": 0, "fails": 1}},
        "metrics": ["accuracy"],
        "protocol": "explicit",
        "files": {
            s: {"path": str(tmp / f"{s}.csv"), "rename": rename} for s in ("train", "dev", "test")
        },
    }
    (tmp / "claims.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    task_section = {"name": "claims", "file": str(tmp / "claims.yaml")}
    task_section.update(train_limit=None, dev_limit=None, test_limit=None)
    config = write_config(tmp, tiny_model_dir, task=task_section)
    assert main(["run", str(config), "--no-probe"]) == 0
    return config, tmp / "runs" / "tiny", tmp


def test_predictions_jsonl_joins_back_to_the_users_file(own_csv_run) -> None:
    _, run, _ = own_csv_run
    rows = [
        json.loads(x) for x in (run / "evaluate" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["line"] for r in rows] == list(range(2, 2 + len(CSV_ROWS)))  # the CSV's lines
    for row, (passage, claim, verdict) in zip(rows, CSV_ROWS, strict=True):
        assert row["fields"] == {"Passage Text": passage, "claim": claim, "verdict": verdict}
        assert row["gold_value"] == verdict
        assert row["predicted_value"] == ("holds", "fails")[row["predicted"]]


def test_predict_takes_the_files_column_names_and_answers_in_its_label_values(
    own_csv_run, tmp_path
) -> None:
    _, run, _ = own_csv_run
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"Passage Text": p, "claim": c}) + "\n" for p, c, _ in CSV_ROWS[:2])
    )
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run), "--input", str(rows), "--output", str(out)]) == 0
    for result in map(json.loads, out.read_text().splitlines()):
        assert result["label"] in ("yes", "no") and result["label_value"] in ("holds", "fails")
        assert result["label_value"] == ("holds", "fails")[result["label_index"]]


def test_predict_checks_its_input_before_the_model_loads(own_csv_run, tmp_path, capsys, caplog):
    _, run, _ = own_csv_run
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"Passage Text": "p", "claim": "c"}) + "\n" + '{"claim": "c"}\n')
    with caplog.at_level(logging.INFO):
        assert main(["predict", str(run), "--input", str(rows)]) == 2
    err = capsys.readouterr().err
    assert f"{rows}: line 2: missing field(s) ['premise']" in err, err
    assert "attention implementation" not in caplog.text  # no model was loaded


def test_an_adapter_below_zero_shot_on_dev_is_said_so(own_csv_run, capsys) -> None:
    """The summary warns and the registered version is tagged; the alias rule is unchanged (the
    first version still takes it)."""
    config, run, tmp = own_csv_run
    metrics_file = run / "evaluate" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert metrics["below_zero_shot_on_dev"] == (
        metrics["dev_adapter"]["accuracy"] < metrics["dev_zero_shot"]["accuracy"]
    )
    metrics.update(below_zero_shot_on_dev=True, dev_adapter={"accuracy": 0.25})
    metrics["dev_zero_shot"]["accuracy"] = 0.5
    metrics_file.write_text(json.dumps(metrics))  # as a run whose adapter got worse leaves it
    capsys.readouterr()
    assert main(["run", str(config), "--stages", "export", "--force", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "warning: on dev the adapter (accuracy 0.2500) is below zero-shot (0.5000)" in out
    registered = json.loads((run / "export" / "registered.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    version = client.get_model_version(registered["name"], registered["version"])
    assert version.tags["below_zero_shot_on_dev"] == "true"
    assert str(client.get_model_version_by_alias(registered["name"], "champion").version) == "1"


def test_a_default_run_prints_no_library_chatter(tmp_path, tiny_model_dir) -> None:
    config = write_config(tmp_path, tiny_model_dir)
    proc = pipeline("run", str(config), "--no-probe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for chatter in (
        " INFO mlflow",
        "Saving the dataset",
        "Loading weights",
        "Downloading artifacts",
        "input example",
        "Traceback",
    ):
        assert chatter not in proc.stderr, chatter
    assert "export    ran" in proc.stdout and "INFO stages.train: step 4 dev" in proc.stderr
