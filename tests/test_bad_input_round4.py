"""Bad input, round four (issue 41): tokenize workers that outlive or die under the run, row
expressions that fail, positional template fields, secrets in errors, bare tracking paths, label
maps that collapse, a full disk. Each: exit 2 (or 3), one line naming the key or file:line, no
traceback, nothing partial left, and a re-run that succeeds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.cli import main
from tests.helpers import assert_no_partial_output, pipeline, start_pipeline, write_config
from tests.test_bad_input import mounted
from tests.test_bad_input_round3 import RTE_ROWS, config_with_task, own_task, run_cli

BIG_ROWS = 300_000  # a few seconds of tokenize on two workers: time to catch them working


def big_task(tmp: Path) -> Path:
    """An RTE-like task whose train file has ``BIG_ROWS`` rows (dev and test: 8)."""
    rows = [{"premise": f"row {i} says a man sleeps.", "hypothesis": "He rests."} for i in range(8)]
    for row in rows:
        row["label"] = "entailment"
    task = own_task(tmp, rows)
    train = tmp / "data" / "train.jsonl"
    line = json.dumps(rows[0]) + "\n"
    train.write_text(line * BIG_ROWS)
    return task


def tokenize_workers(proc: psutil.Process, timeout: float = 120) -> list[psutil.Process]:
    """The run's two forked tokenize workers (children running the run's own command line),
    once both are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_cmd = [c for c in proc.children() if _alive(c) and c.cmdline() == proc.cmdline()]
        if len(with_cmd) == 2:
            return with_cmd
        assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, "run ended early"
        time.sleep(0.05)
    raise AssertionError("the tokenize workers never started")


def _alive(p: psutil.Process) -> bool:
    try:  # PID 1 here reaps a dead orphan after a second or two: a zombie counts as dead
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def error_line(err: str) -> str:
    """The one ``error:`` line of a command's stderr (no traceback anywhere)."""
    assert "Traceback" not in err, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("error: ")]
    return line


def tokenize_run(tmp_path: Path, tiny_model_dir: Path) -> list[str]:
    """``pipeline run`` of the tokenize stage alone, over ``big_task`` on two workers."""
    config = config_with_task(tmp_path, tiny_model_dir, big_task(tmp_path))
    config.write_text(config.read_text().replace("name: own", "name: own\n  num_proc: 2", 1))
    return ["run", str(config), "--stages", "tokenize"]


def test_kill_9_of_the_run_takes_its_tokenize_workers_with_it(tmp_path, tiny_model_dir) -> None:
    args = tokenize_run(tmp_path, tiny_model_dir)
    run = start_pipeline(*args)
    parent = psutil.Process(run.pid)
    workers = tokenize_workers(parent)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    time.sleep(5)
    assert not [w.pid for w in workers if _alive(w)]


def test_a_killed_tokenize_worker_is_one_error_line_and_the_rerun_works(
    tmp_path, tiny_model_dir
) -> None:
    args = tokenize_run(tmp_path, tiny_model_dir)
    run = start_pipeline(*args, stderr=subprocess.PIPE)
    workers = tokenize_workers(psutil.Process(run.pid))
    os.kill(workers[0].pid, signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err[-2000:]
    line = error_line(err)
    assert f"a tokenize worker (pid {workers[0].pid}) was killed by signal 9" in line, line
    assert "left nothing behind: run the same command again" in line
    assert not [w.pid for w in workers if _alive(w)]  # the other one was stopped
    assert_no_partial_output(tmp_path / "runs" / "tiny")
    done = pipeline(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads((tmp_path / "runs" / "tiny" / "tokenize" / "stats.json").read_text())
    assert stats["train"]["rows"] == BIG_ROWS


ROW_EXPRESSION_CASES = {  # id: (bad row's field changes, task changes, the error's key)
    "division-by-zero": (
        {"premise": "zero"},
        {"derive": {"t": "{{ premise[:(1 // (premise != 'zero'))] }}"}, "template": "{t}"},
        r"derive\.t: failed on this row \(ZeroDivisionError",
    ),
    "text-plus-number": (
        {"stars": "five"},
        {"derive": {"t": "{{ stars + 1 }}"}, "template": "{premise} {t}"},
        r"derive\.t: failed on this row \(TypeError",
    ),
}


@pytest.mark.parametrize("case", sorted(ROW_EXPRESSION_CASES))
def test_an_expression_failing_on_one_row_names_key_file_and_line(
    tmp_path, tiny_model_dir, capsys, case
) -> None:
    bad, changes, message = ROW_EXPRESSION_CASES[case]
    rows = [{**r, "stars": 4} for r in RTE_ROWS] * 20  # 160 rows: the bad one past validate's 20
    rows[150] = {**rows[150], **bad}  # line 151
    config = config_with_task(tmp_path, tiny_model_dir, own_task(tmp_path, rows, **changes))
    assert main(["validate", str(config), "--no-probe"]) == 0  # it reads only the first rows
    capsys.readouterr()
    assert main(["run", str(config), "--stages", "tokenize"]) == 2
    line = error_line(capsys.readouterr().err)  # after the progress bar
    assert re.search(rf"train\.jsonl: line 151: {message}", line), line
    assert_no_partial_output(tmp_path / "runs" / "tiny")


def test_a_format_spec_text_cannot_take_names_the_template(tmp_path, tiny_model_dir, capsys):
    task = own_task(tmp_path, template="{premise:d}\nQuestion: {hypothesis}?\nAnswer:")
    err = run_cli(capsys, "validate", str(config_with_task(tmp_path, tiny_model_dir, task)))
    assert re.search(r"train\.jsonl: line 1: template: failed on this row \(ValueError", err), err


@pytest.mark.parametrize("placeholder", ["{}", "{0}", "{1[x]}"])
def test_a_positional_placeholder_is_refused_at_load(
    tmp_path, tiny_model_dir, capsys, placeholder
) -> None:
    task = own_task(tmp_path, template=f"Review: {placeholder} {{premise}}\nAnswer:")
    err = run_cli(capsys, "validate", str(config_with_task(tmp_path, tiny_model_dir, task)))
    assert "own_task.yaml" in err and "template: positional placeholder" in err, err


@pytest.mark.parametrize(
    "value",
    ["[hf_TOPSECRET0123456789]", "{a: hf_TOPSECRET0123456789}", "12345678901234567890",
     "[hf_TOPSECRET0123456789"],
)  # fmt: skip
def test_a_secret_never_shows_in_an_error(tmp_path, tiny_model_dir, capsys, value) -> None:
    config = write_config(tmp_path, tiny_model_dir)
    err = run_cli(capsys, "validate", str(config), "--set", f"model.hub_token={value}")
    assert "model.hub_token" in err and "***" in err, err
    assert "TOPSECRET" not in err and "1234567890" not in err, err


@pytest.mark.parametrize("uri", ["/proc/nope/x", "relative/mlruns", "mlflow.db"])
def test_a_bare_path_as_tracking_uri_names_the_key(tmp_path, tiny_model_dir, capsys, uri) -> None:
    config = write_config(tmp_path, tiny_model_dir, tracking={"uri": uri})
    for command in ("validate", "run"):
        err = run_cli(capsys, command, str(config), "--no-probe")
        assert f"tracking.uri: {uri!r} is not a URI" in err, err
        assert "sqlite:///PATH/mlflow.db" in err and "http(s)://HOST:PORT" in err
    assert not (tmp_path / "runs").exists()


LABEL_MAP_CASES = {  # id: (label map as YAML, the error)
    "stripped-twice": ("{'pos': 1, ' pos': 0, neg: 0}", r"keys 'pos' and ' pos' are the same"),
    "number-and-text": ("{1: 0, '1': 1}", r"keys 1 and '1' are the same label"),
    "bool-and-text": ("{true: 1, 'True': 0}", r"keys True and 'True' are the same label"),
    "null-key": ("{null: 0, neg: 1}", r"a null key is not a label value"),
    "bool-value": ("{pos: true, neg: false}", r"'pos': True is not a choice index"),
    "one-class": ("{neg: 1, pos: 1}", r"every label goes to choice 1: .*one class"),
}


@pytest.mark.parametrize("case", sorted(LABEL_MAP_CASES))
def test_label_maps_that_collapse_are_refused_at_load(
    tmp_path, tiny_model_dir, capsys, case
) -> None:
    yaml_map, message = LABEL_MAP_CASES[case]
    task = own_task(tmp_path)
    text = task.read_text()
    start = text.index("  map:")
    end = text.index("\n", text.index("not_entailment", start)) + 1
    task.write_text(text[:start] + f"  map: {yaml_map}\n" + text[end:])
    err = run_cli(capsys, "validate", str(config_with_task(tmp_path, tiny_model_dir, task)))
    assert "own_task.yaml" in err and "label.map: " in err, err
    assert re.search(message, err), err


def test_disk_full_in_tokenize_names_the_directory_and_the_space(tmp_path, tiny_model_dir) -> None:
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tmp_path / "full")) as full:
        config = config_with_task(
            tmp_path,
            tiny_model_dir,
            big_task(tmp_path),
            output_dir=str(full / "runs"),
            tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},  # the store elsewhere
        )
        proc = pipeline("run", str(config), "--stages", "tokenize")
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = error_line(proc.stderr)
        assert "No space left on device: stage tokenize was writing into" in line, line
        assert str(full / "runs" / "tiny") in line
        assert re.search(r"had written \d+\.\d MiB .*; \d+\.\d MiB are free there now", line)
        assert_no_partial_output(full / "runs" / "tiny")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"split": {"dev": 0.5, "test": 0.5}}, r"split: .*leaves no row to train on"),
        ({"protocol": "explicit", "split": {"dev": 0.2}}, r"split: only for protocol: split"),
        ({"files": {"train": {"path": "x.jsonl"}}}, r"protocol split needs exactly \['data'\]"),
    ],
    ids=["no-rows-left", "wrong-protocol", "two-files"],
)
def test_a_one_file_split_declaration_is_checked_at_load(
    tmp_path, tiny_model_dir, capsys, changes, message
) -> None:
    data = {"data": {"path": str(tmp_path / "data" / "train.jsonl")}}
    task = own_task(tmp_path, protocol="split", files=data)
    text = task.read_text()
    spec = yaml.safe_load(text)
    if changes.get("protocol") == "explicit":
        spec["files"] = {s: {"path": str(tmp_path / "data" / f"{s}.jsonl")} for s in TRIPLE}
    task.write_text(yaml.safe_dump({**spec, **changes}))
    err = run_cli(capsys, "validate", str(config_with_task(tmp_path, tiny_model_dir, task)))
    assert "own_task.yaml" in err and re.search(message, err), err


TRIPLE = ("train", "dev", "test")
