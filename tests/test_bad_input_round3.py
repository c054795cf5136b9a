"""Bad input, round three: task declarations, non-finite numbers, tracking URIs, CLI numbers,
early failures and a half-built MLflow store. Each case: exit 2, one line naming the key, flag
or file:line, no traceback, nothing half-made left behind."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.tasks import DataError, Encoder, get_task
from pipeline.tracking import sqlite_store
from pipeline.tracking.tracker import TrackingError, ensure_sqlite_schema
from tests.helpers import ENV, REPO, write_config

RTE_ROWS = [
    {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": "entailment"},
    {"premise": "A dog runs.", "hypothesis": "A cat flies.", "label": "not_entailment"},
] * 4


def own_task(tmp: Path, rows=RTE_ROWS, **changes) -> Path:
    """A task file (RTE-like, explicit splits) over ``rows``, with ``changes`` to its keys."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "name": "own",
        "template": "{premise}\nQuestion: {hypothesis}?\nAnswer:",
        "choices": [" yes", " no"],
        "label": {"field": "label", "map": {"entailment": 0, "not_entailment": 1}},
        "metrics": ["accuracy"],
        "protocol": "explicit",
        "files": {s: {"path": str(data / f"{s}.jsonl")} for s in ("train", "dev", "test")},
        **changes,
    }
    path = tmp / "own_task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def run_cli(capsys, *args: str) -> str:
    """`pipeline ARGS` in this process: it must exit 2; its stderr."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


def config_with_task(tmp: Path, model: Path, task_file: Path, **sections) -> Path:
    task = {"name": "own", "file": str(task_file)}
    task.update(train_limit=None, dev_limit=None, test_limit=None)
    return write_config(tmp, model, task=task, **sections)


ONE_CHOICE = {"choices": [" yes"], "label": {"field": "label", "map": {"entailment": 0}}}
DECLARATION_CASES = {  # id: (changes to the task file, the error it gives at load)
    "derive-syntax": (
        {"derive": {"x": "{{ premise.strip( }}"}, "template": "{x}"},
        r"derive\.x: Jinja syntax",
    ),
    "choice-template-syntax": (
        {"choice_fields": ["premise", "hypothesis"], "choices": [], "choice_template": "{% if %}"},
        r"choice_template: Jinja syntax",
    ),
    "format-syntax": ({"template": "{premise"}, r"template: "),
    "duplicate-choices": (
        {"choices": [" positive", " positive"]},
        r"choices: \[' positive'\] given twice",
    ),
    "one-choice": (ONE_CHOICE, r"choices: .*at least two"),
    "label-map-range": (
        {"label": {"field": "label", "map": {"entailment": 0, "not_entailment": 2}}},
        r"label\.map: .*outside",
    ),
}


@pytest.mark.parametrize("case", sorted(DECLARATION_CASES))
def test_task_declaration_mistakes_stop_at_load(tmp_path, tiny_model_dir, capsys, case) -> None:
    changes, message = DECLARATION_CASES[case]
    config = config_with_task(tmp_path, tiny_model_dir, own_task(tmp_path, **changes))
    err = run_cli(capsys, "validate", str(config), "--no-probe")
    assert "own_task.yaml" in err
    assert re.search(message, err), err


def test_a_key_given_twice_in_a_task_file_is_refused(tmp_path, tiny_model_dir, capsys) -> None:
    task_file = own_task(tmp_path)
    task_file.write_text(task_file.read_text() + "metrics: [f1]\n")
    err = run_cli(capsys, "validate", str(config_with_task(tmp_path, tiny_model_dir, task_file)))
    assert "key 'metrics' appears twice" in err and "own_task.yaml" in err


@pytest.mark.parametrize(
    ("rows", "changes", "message"),
    [
        (
            RTE_ROWS,
            {"derive": {"x": "{{ premis.strip() }}"}, "template": "{x} {hypothesis}"},
            r"derive\.x names \['premis'\], a field no row of .*train\.jsonl has",
        ),
        (
            RTE_ROWS,
            {"template": "{premise} {hypothesiz}"},
            r"template names \['hypothesiz'\], a field no row of .*train\.jsonl has",
        ),
        (
            [*RTE_ROWS, {"premise": "p", "hypothesis": "h", "label": "maybe"}],
            {},
            r"train\.jsonl: line 9: label 'maybe' is not one of",
        ),
        (
            [{"premise": "p", "label": "entailment"}, *RTE_ROWS],
            {},
            r"train\.jsonl: line 1: missing field\(s\) \['hypothesis'\]",
        ),
    ],
    ids=["derive-undefined-name", "template-placeholder", "label-outside-map", "missing-column"],
)
def test_validate_reads_the_data(tmp_path, tiny_model_dir, capsys, rows, changes, message) -> None:
    """Found in seconds by validate, with the key or the file and line, before any model."""
    config = config_with_task(tmp_path, tiny_model_dir, own_task(tmp_path, rows, **changes))
    err = run_cli(capsys, "validate", str(config), "--no-probe")
    assert re.search(message, err), err
    assert main(["validate", str(config), "--no-probe", "--no-data"]) == 0  # data not read
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("answers", [["   "], ""], ids=["blank-in-list", "empty-text"])
def test_blank_generative_answers_name_file_and_line(tmp_path, tiny_model_dir, capsys, answers):
    rows = [{"context": "Paris is in France.", "question": "Where?", "answers": ["France"]}] * 3
    rows.append({"context": "c", "question": "q", "answers": answers})
    changes = {
        "type": "generation", "template": "{context}\n{question}\nAnswer:", "choices": [],
        "label": None, "target": "answers", "metrics": ["exact_match"],
    }  # fmt: skip
    config = config_with_task(tmp_path, tiny_model_dir, own_task(tmp_path, rows, **changes))
    err = run_cli(capsys, "validate", str(config), "--no-probe")
    assert "train.jsonl: line 4: target" in err and "non-blank" in err


def test_choices_that_tokenize_identically_are_refused() -> None:
    """Two different texts one token id apart from each other: a word-level tokenizer maps both
    unknown words to [UNK], so every row would score them the same."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "yes": 1, "no": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    task = get_task("rte").model_copy(update={"choices": (" maybe", " perhaps")})
    with pytest.raises(DataError, match=r"choices ' maybe' and ' perhaps' tokenize identically"):
        Encoder(task, tokenizer, 64).check_choices()
    Encoder(
        get_task("rte").model_copy(update={"choices": (" yes", " no")}), tokenizer, 64
    ).check_choices()


@pytest.mark.parametrize(
    "override",
    ["train.lr.prompt=.nan", "train.lr.offset=.inf", "tracking.retry_seconds=.inf",
     "train.weight_decay=.nan", "method.alpha=.nan"],
)  # fmt: skip
def test_non_finite_numbers_are_refused_at_load(tmp_path, tiny_model_dir, capsys, override):
    method = {"method": {"name": "dept", "num_virtual_tokens": 4, "budget_tokens": 10}}
    config = write_config(tmp_path, tiny_model_dir, **(method if "alpha" in override else {}))
    err = run_cli(capsys, "validate", str(config), "--set", override)
    key = override.split("=")[0]
    assert f"{key}: must be a finite number" in err, err


def test_a_huge_learning_rate_is_warned_about(tmp_path, tiny_model_dir, capsys) -> None:
    config = write_config(tmp_path, tiny_model_dir)
    assert main(["validate", str(config), "--no-probe", "--set", "train.lr.prompt=1e30"]) == 0
    assert "train.lr.prompt = 1e+30 is far above any useful rate" in capsys.readouterr().out


def test_an_unwritable_file_tracking_uri_fails_before_any_stage(tmp_path, tiny_model_dir, capsys):
    config = write_config(tmp_path, tiny_model_dir, tracking={"uri": "file:///proc/nope/mlruns"})
    for command in ("validate", "run"):
        err = run_cli(capsys, command, str(config), "--no-probe")
        assert "tracking.uri file:///proc/nope/mlruns: tracking store directory" in err
    assert not (tmp_path / "runs").exists()


def test_cli_numbers_are_checked_when_the_command_line_is_read(tmp_path, capsys) -> None:
    study = REPO / "configs" / "studies" / "gemma3_270m_cb.yaml"
    for args, flag in (
        (["compare", str(study), "--parallel", "0"], "--parallel: must be ≥ 1, got 0"),
        (["submit", str(study), "--max-parallel", "0"], "--max-parallel: must be ≥ 1, got 0"),
        (["run", str(study), "--variant", "-1"], "--variant: must be ≥ 0, got -1"),
        (["predict", "x", "--input", "y", "--batch-size", "two"], "expected a whole number"),
    ):
        with pytest.raises(SystemExit) as exit:
            main(args)
        assert exit.value.code == 2 and flag in capsys.readouterr().err


def test_early_failures_leave_no_run_directory(tmp_path, tiny_model_dir, capsys) -> None:
    port = _closed_port()
    cases = {
        "server": (["--set", f"tracking.uri=http://127.0.0.1:{port}"], "unreachable"),
        "stages": (["--stages", "tokenise"], "--stages: unknown stage(s) ['tokenise']"),
    }
    for name, (extra, said) in cases.items():
        config = write_config(tmp_path / name, tiny_model_dir)
        err = run_cli(capsys, "run", str(config), "--no-probe", *extra)
        assert said in err and not (tmp_path / name / "runs").exists(), (name, err)
    config = write_config(tmp_path / "nul", tiny_model_dir)
    config.write_text(config.read_text().replace("name: tiny", 'name: "a\\0b"'))  # YAML's \0
    err = run_cli(capsys, "run", str(config))
    assert "name: must be a plain directory name (no '/', no control characters" in err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_half_built_store_is_rebuilt_and_one_with_runs_is_left_alone(tmp_path) -> None:
    cache = tmp_path / "cache"
    db = tmp_path / "runs" / "mlflow.db"
    uri = f"sqlite:///{db}"
    sqlite_store.ensure_sqlite_store(uri, cache)
    version = sqlite_store.schema_version(db)
    assert version and version == sqlite_store.schema_version(next(cache.glob("mlflow-*.db")))
    with sqlite3.connect(db) as con:  # as a kill during MLflow's migrations leaves it
        con.execute("CREATE TABLE _alembic_tmp_model_versions (x INTEGER)")
    assert sqlite_store.schema_version(db) is None
    sqlite_store.ensure_sqlite_store(uri, cache)
    assert sqlite_store.schema_version(db) == version
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_run(client.create_experiment("kept"))
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'older'")
    with pytest.raises(TrackingError, match=r"holds runs .*mlflow db upgrade"):
        ensure_sqlite_schema(uri)
    assert sqlite_store.holds_runs(db)  # untouched


def test_kill_9_while_the_store_is_built_leaves_none_and_the_next_run_works(
    tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path; from pipeline.tracking import sqlite_store; "
        "sqlite_store.ensure_sqlite_store(sys.argv[1], Path(sys.argv[2]))"
    )
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-c", code, uri, str(cache)], cwd=REPO, env=ENV)
    deadline = time.monotonic() + 120
    while not list(cache.glob(".mlflow-*")) and time.monotonic() < deadline:  # building now
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(cache.glob("mlflow-*.db")) and not (tmp_path / "runs" / "mlflow.db").exists()
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(cache))
    ensure_sqlite_schema(uri)  # what the next run does
    assert sqlite_store.schema_version(tmp_path / "runs" / "mlflow.db")
