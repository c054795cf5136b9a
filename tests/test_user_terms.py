"""What a user gets back, in their own terms: predictions carry the task's label values and each
row's line and fields as the user's file writes them; `pipeline predict` takes the file's own
column names and checks its input before any model loads; an adapter worse than zero-shot on
dev is said so; a default run's log holds no library chatter."""

from __future__ import annotations

import json
import logging
import os
import re
import stat

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


def test_predict_reads_a_csv_echoes_its_columns_and_writes_csv(own_csv_run, tmp_path) -> None:
    """The user's own CSV in, CSV out: every row's id and gold label come back beside its
    prediction (rows join by id, not by order), and the answers equal the JSONL path's."""
    import csv

    _, run, _ = own_csv_run
    rows = tmp_path / "rows.csv"
    body = "".join(f'{i},"{p}","{c}",{v}\n' for i, (p, c, v) in enumerate(CSV_ROWS[:4], 7))
    rows.write_text("id," + CSV_HEADER + body)
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), "--input", str(rows), "--output", str(out)]) == 0
    with out.open() as f:
        written = list(csv.DictReader(f))
    assert [r["id"] for r in written] == ["7", "8", "9", "10"]
    assert [r["verdict"] for r in written] == [v for _, _, v in CSV_ROWS[:4]]
    assert set(written[0]) == {
        "id", "verdict", "label", "label_value", "label_index", "scores.yes", "scores.no"
    }  # fmt: skip
    as_jsonl = tmp_path / "rows.jsonl"
    as_jsonl.write_text(
        "".join(json.dumps({"Passage Text": p, "claim": c}) + "\n" for p, c, _ in CSV_ROWS[:4])
    )
    expected = tmp_path / "expected.jsonl"
    assert main(["predict", str(run), "--input", str(as_jsonl), "--output", str(expected)]) == 0
    results = [json.loads(x) for x in expected.read_text().splitlines()]
    assert [r["label_value"] for r in written] == [r["label_value"] for r in results]
    assert [float(r["scores.yes"]) for r in written] == [r["scores"]["yes"] for r in results]


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
    """Nothing a user need not act on, the merged checkpoint's export included: no DeepSpeed
    accelerator notice, no MLflow complaint about a model card or licence on the hub."""
    config = write_config(tmp_path, tiny_model_dir, export={"merged": True})
    proc = pipeline("run", str(config), "--no-probe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for chatter in (
        " INFO mlflow",
        "Saving the dataset",
        "Loading weights",
        "Downloading artifacts",
        "input example",
        "Traceback",
        "Setting accelerator",
        "model card",
        "license",
    ):
        assert chatter not in proc.stderr + proc.stdout, chatter
    ours = re.compile(r" WARNING (pipeline|stages)\.")  # the run's own warnings need action
    assert not [x for x in proc.stderr.splitlines() if "WARNING" in x and not ours.search(x)]
    assert "export    ran" in proc.stdout and "INFO stages.train: step 4 dev" in proc.stderr


def test_an_override_that_breaks_the_recipe_is_warned_about(tmp_path, tiny_model_dir, capsys):
    """`--set train.steps=40` on a recipe with 30 warm-up steps and dev every 50: both said, by
    validate and by run (before any stage)."""
    config = write_config(tmp_path, tiny_model_dir, train={"warmup_steps": 30, "eval_every": 50})
    said = (
        "train.warmup_steps = 30 is at least half of train.steps = 40",
        "train.eval_every = 50 exceeds train.steps = 40: dev is scored once, at the end",
    )
    assert main(["validate", str(config), "--no-probe", "--set", "train.steps=40"]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in said), out
    assert main(["validate", str(config), "--no-probe", "--set", "train.steps=400"]) == 0
    assert "# warnings" not in capsys.readouterr().out
    proc = pipeline(
        "run", str(config), "--no-probe", "--stages", "tokenize", "--set", "train.steps=40"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(s in proc.stderr for s in said), proc.stderr[-2000:]


def test_validate_prints_the_absolute_paths_it_resolved(tmp_path, tiny_model_dir, capsys) -> None:
    config = write_config(tmp_path, tiny_model_dir, output_dir="runs")  # relative: to the cwd
    assert main(["validate", str(config), "--no-probe", "--no-data"]) == 0
    out = capsys.readouterr().out.split("# paths\n")[1].split("\n\n")[0]
    from pathlib import Path

    assert f"run directory  {Path.cwd() / 'runs' / 'tiny'}  (output_dir: from the working" in out
    assert f"tracking       sqlite:///{Path.cwd() / 'runs' / 'mlflow.db'}" in out


def test_exporting_the_same_adapter_again_moves_the_alias_to_the_new_version(
    tmp_path, tiny_model_dir
) -> None:
    """A finished run exported again with `export.merged: true` (train cached): the new version
    has the merged checkpoint and takes @champion from the version that has none."""
    config = write_config(tmp_path, tiny_model_dir)
    assert main(["run", str(config), "--no-probe"]) == 0
    assert main(["run", str(config), "--no-probe", "--set", "export.merged=true"]) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("tiny", "champion")
    first = client.get_model_version("tiny", "1")
    assert str(champion.version) == "2" and champion.tags["merged"] == "true"
    assert champion.tags["adapter_digest"] == first.tags["adapter_digest"]
    assert first.tags["merged"] == "false"
    registered = json.loads((tmp_path / "runs" / "tiny" / "export" / "registered.json").read_text())
    assert registered["version"] == "2" and registered["alias"] == "champion"


TEAMS = ("billing", "tech", "shipping")
TICKETS = {
    "billing": "I was charged twice for my order {i}, please refund.",
    "tech": "The app crashes when I open settings, attempt {i}.",
    "shipping": "My parcel {i} has not arrived yet, where is it?",
}


@pytest.fixture(scope="module")
def one_file_task(tmp_path_factory):
    """A 3-class ticket-routing task in ONE CSV file (20 rows a class, in class blocks)."""
    tmp = tmp_path_factory.mktemp("one-file")
    rows = [(TICKETS[team].format(i=i), team) for team in TEAMS for i in range(20)]
    body = "".join(f'{n},"{text}",{team}\n' for n, (text, team) in enumerate(rows, 1))
    (tmp / "tickets.csv").write_text("ticket_id,message,team\n" + body)
    task = {
        "name": "tickets",
        "template": "Ticket: {message}\nTeam:",
        "choices": [" billing", " tech", " shipping"],
        "label": {"field": "team", "map": {t: i for i, t in enumerate(TEAMS)}},
        "metrics": ["accuracy"],
        "protocol": "split",
        "files": {"data": {"path": "tickets.csv"}},
        "split": {"dev": 0.1, "test": 0.2},
    }
    (tmp / "tickets.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return tmp


def one_file_config(tmp, tiny_model_dir, root, num_proc: int):
    task = {"name": "tickets", "file": str(root / "tickets.yaml"), "data_dir": str(root)}
    task.update(train_limit=None, dev_limit=None, test_limit=None, num_proc=num_proc)
    return write_config(tmp, tiny_model_dir, task=task)


def test_one_data_file_is_split_stratified_from_validate_to_predict(
    one_file_task, tiny_model_dir, tmp_path, capsys
) -> None:
    config = one_file_config(tmp_path / "a", tiny_model_dir, one_file_task, num_proc=1)
    assert main(["validate", str(config), "--no-probe"]) == 0
    out = capsys.readouterr().out
    for split, n, each in (("train", 42, 14), ("dev", 6, 2), ("test", 12, 4)):
        counts = f"(billing {each}, tech {each}, shipping {each})"
        assert re.search(rf"\n{split} +{n} rows  \S+tickets\.csv  {re.escape(counts)}\n", out)
    assert "one file cut 70% / 10% / 20% (seed 42, stratified by team)" in out
    assert main(["run", str(config), "--no-probe"]) == 0
    run = tmp_path / "a" / "runs" / "tiny"
    stats = json.loads((run / "tokenize" / "stats.json").read_text())
    assert stats["split"]["rows"] == {"train": 42, "dev": 6, "test": 12}
    assert stats["split"]["classes"]["test"] == {"billing": 4, "tech": 4, "shipping": 4}
    lines = {}
    for split in ("dev", "test"):
        rows = datasets_rows(run, split)
        lines[split] = [r["line"] for r in rows]
    assert not set(lines["dev"]) & set(lines["test"])
    # the same cut on two tokenize processes
    other = one_file_config(tmp_path / "b", tiny_model_dir, one_file_task, num_proc=2)
    assert main(["run", str(other), "--no-probe", "--stages", "tokenize"]) == 0
    for split in ("dev", "test"):
        again = datasets_rows(tmp_path / "b" / "runs" / "tiny", split)
        assert [r["line"] for r in again] == lines[split]
    # predict straight from the user's own file: its id comes back
    out_file = tmp_path / "predicted.csv"
    source = one_file_task / "tickets.csv"
    assert main(["predict", str(run), "--input", str(source), "--output", str(out_file)]) == 0
    import csv

    with out_file.open() as f:
        predicted = list(csv.DictReader(f))
    assert [r["ticket_id"] for r in predicted] == [str(n) for n in range(1, 61)]
    assert {r["label_value"] for r in predicted} <= set(TEAMS)


def datasets_rows(run, split: str) -> list[dict]:
    import datasets

    return datasets.load_from_disk(str(run / "tokenize" / split)).to_list()


def test_predict_output_is_checked_first_and_written_with_the_umask(
    own_csv_run, tmp_path, capsys, caplog
) -> None:
    _, run, _ = own_csv_run
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"Passage Text": "p", "claim": "c"}) + "\n")
    with caplog.at_level(logging.INFO):
        assert main(["predict", str(run), "--input", str(rows), "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a directory: name the file to write" in capsys.readouterr().err
    assert "attention implementation" not in caplog.text  # refused before the model loaded
    out = tmp_path / "out.jsonl"
    old = os.umask(0o022)
    try:
        assert main(["predict", str(run), "--input", str(rows), "--output", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_a_row_naming_one_field_twice_is_refused(own_csv_run, tmp_path, capsys) -> None:
    """The file's column ("Passage Text") and the task's name for it ("premise") in one row:
    which one was meant is not guessed."""
    _, run, _ = own_csv_run
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"Passage Text": "a", "premise": "b", "claim": "c"}) + "\n")
    assert main(["predict", str(run), "--input", str(rows)]) == 2
    err = capsys.readouterr().err
    assert f"{rows}: line 1: both 'Passage Text' (the file's column) and 'premise'" in err, err


def test_zero_shot_is_scored_once_per_rows_and_base(tmp_path, tiny_model_dir, monkeypatch) -> None:
    """Another adapter on the same rows reuses the bare base's scores; a changed template
    (other rows for the model) scores them again."""
    from tests.test_bad_input_round3 import config_with_task, own_task

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    config = config_with_task(tmp_path, tiny_model_dir, own_task(tmp_path))
    run = tmp_path / "runs" / "tiny" / "evaluate"

    def evaluate(*sets: str) -> tuple[dict, dict]:
        args = ["run", str(config), "--no-probe", *(a for s in sets for a in ("--set", s))]
        assert main(args) == 0
        return (json.loads((run / name).read_text()) for name in ("metrics.json", "timing.json"))

    first, timing = evaluate()
    assert "zero_shot_cached" not in timing
    again, timing = evaluate("train.lr.prompt=0.05")  # another adapter, the same rows
    assert timing["zero_shot_cached"] == 1
    assert again["zero_shot"] == first["zero_shot"]
    assert again["dev_zero_shot"] == first["dev_zero_shot"]
    assert len(list((tmp_path / "cache" / "zero_shot").iterdir())) == 1
    task = tmp_path / "own_task.yaml"
    task.write_text(task.read_text().replace("'{premise}", "'Premise: {premise}"))
    _, timing = evaluate()
    assert "zero_shot_cached" not in timing  # the template changed: scored again
    assert len(list((tmp_path / "cache" / "zero_shot").iterdir())) == 2
