"""Bad input, round two (issue 19): each case is one clear `error:` line (exit 2) naming its
cause, before any stage output exists; then the crash windows and signals around the stages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.cli import main
from tests.helpers import (
    ENV,
    GOOD_RTE,
    REPO,
    assert_no_partial_output,
    interrupt_training,
    losses,
    mlflow_server,
    pipeline,
    rte_dir,
    rte_task,
    start_pipeline,
    write_config,
)


def model_copy(tmp: Path, source: Path, change) -> Path:
    """A copy of the tiny model directory with ``change(directory)`` applied."""
    target = tmp / "model"
    shutil.copytree(source, target)
    change(target)
    return target


def damaged_model(change):
    """A CASES entry's maker: the config points at a copy of the tiny model with ``change``."""
    return lambda t, m: ({"model": {"source": str(model_copy(t, m, change))}}, [])


def edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def copa_dir(root: Path, row: dict) -> Path:
    good = {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang."}
    good.update(question="cause", label=0)
    d = root / "data" / "superglue" / "copa"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, **row}) + "\n")
    (d / "val.jsonl").write_text((json.dumps(good) + "\n") * 4)
    return root / "data"


def rte_row(**fields) -> str:
    return json.dumps({**json.loads(GOOD_RTE), **fields}, ensure_ascii=False) + "\n"


# (case id, function(tmp, tiny model dir) -> (config sections, extra CLI args), expected message)
CASES = {
    "model_without_tokenizer": (
        damaged_model(lambda d: (d / "tokenizer.json").unlink()),
        r"model directory .*model has no tokenizer files \(one of tokenizer\.json",
    ),
    "truncated_safetensors": (
        damaged_model(lambda d: truncate(d / "model.safetensors", 5000)),
        r"model\.safetensors: truncated or corrupt safetensors file",
    ),
    "corrupt_model_config": (
        damaged_model(lambda d: truncate(d / "config.json", 20)),
        r"config\.json: not a readable JSON config",
    ),
    "tokenizer_larger_than_vocabulary": (
        damaged_model(lambda d: edit_json(d / "config.json", vocab_size=100)),
        r"the tokenizer has \d+ tokens but the model's vocabulary has 100 rows",
    ),
    "bool_as_steps": (
        lambda t, m: ({"train": {"steps": True}}, []),
        r"train\.steps: expected a number, got true",
    ),
    "unparsable_override": (
        lambda t, m: ({}, ["--set", "train.steps=[1"]),
        r"--set 'train\.steps=\[1': the value is not valid YAML",
    ),
    "unknown_tracking_scheme": (
        lambda t, m: ({"tracking": {"uri": "bogus://x"}}, []),
        r"tracking\.uri: unsupported scheme 'bogus'",
    ),
    "bad_alias": (
        lambda t, m: ({"export": {"alias": "my champion"}}, []),
        r"export\.alias: 'my champion' is not a registry alias",
    ),
    "version_like_alias": (
        lambda t, m: ({"export": {"alias": "v2"}}, []),
        r"export\.alias: 'v2' is not a registry alias",
    ),
    "bad_registered_model_name": (
        lambda t, m: ({"export": {"registered_model_name": "team/model"}}, []),
        r"export\.registered_model_name: 'team/model' is not a registered model name",
    ),
    "null_field": (
        lambda t, m: ({"task": rte_task(rte_dir(t, train=GOOD_RTE + rte_row(premise=None)))}, []),
        r"train\.jsonl: line 2: field 'premise' is null",
    ),
    "list_label": (
        lambda t, m: (
            {"task": rte_task(rte_dir(t, train=GOOD_RTE * 2 + rte_row(label=["entailment"])))},
            [],
        ),
        r"train\.jsonl: line 3: label \['entailment'\] is not a single value",
    ),
    "latin1_file": (
        lambda t, m: (
            {"task": rte_task(rte_dir(t, train=GOOD_RTE + rte_row(premise="caf\xe9")))},
            ["latin-1"],
        ),
        r"train\.jsonl: line 2: not UTF-8 text \(byte b'\\xe9'\); re-encode the file as UTF-8",
    ),
    "copa_unknown_question": (
        lambda t, m: ({"task": {**rte_task(copa_dir(t, {"question": "why"})), "name": "copa"}}, []),
        r"train\.jsonl: line 2: question 'why' is not one of \['cause', 'effect'\]",
    ),
    "overlong_name": (
        lambda t, m: ({}, ["--set", "name=" + "x" * 300]),
        r"name: String should have at most 100 characters",
    ),
    "copa_empty_choice": (
        lambda t, m: ({"task": {**rte_task(copa_dir(t, {"choice2": " "})), "name": "copa"}}, []),
        r"train\.jsonl: line 2: empty choice\(s\) \['choice2'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_round_two(case, tmp_path, tiny_model_dir, capsys) -> None:
    make, expected = CASES[case]
    sections, extra = make(tmp_path, tiny_model_dir)
    if extra == ["latin-1"]:  # re-encode the data file written as UTF-8
        data = tmp_path / "data" / "superglue" / "rte" / "train.jsonl"
        data.write_bytes(data.read_text().encode("latin-1"))
        extra = []
    config = write_config(tmp_path, tiny_model_dir, **{"tracking": {"uri": None}, **sections})
    assert main(["run", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(expected, err), err
    assert_no_partial_output(tmp_path / "runs" / "tiny")
    if case.startswith(("model_", "truncated", "corrupt", "tokenizer")):  # checked before stages
        assert not (tmp_path / "runs" / "tiny").exists()  # not even an empty run directory


def test_duplicate_yaml_key_names_both_lines(tmp_path, capsys) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text("name: x\ntrain:\n  steps: 3\nmodel:\n  dtype: float32\ntrain:\n  steps: 5\n")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "dup.yaml: not valid YAML: key 'train' appears twice (lines 2 and 6)" in err


def test_validate_catches_a_bad_alias_before_any_work(tmp_path, tiny_model_dir, capsys) -> None:
    config = write_config(tmp_path, tiny_model_dir, export={"alias": "latest"})
    assert main(["validate", str(config)]) == 2
    assert "export.alias: 'latest' is not a registry alias" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """One finished run (model given by a relative path) that the cases below damage copies of."""
    tmp = tmp_path_factory.mktemp("finished")
    relative = os.path.relpath(tiny_model_dir, REPO)
    config = write_config(tmp, tiny_model_dir, model={"source": relative})
    assert pipeline("run", str(config)).returncode == 0
    rows = tmp / "rows.jsonl"
    rows.write_text(GOOD_RTE.replace("premise", "passage").replace("hypothesis", "question"))
    return config, tmp / "runs" / "tiny", rows


def test_task_json_names_the_model_by_absolute_path_and_predict_runs_anywhere(
    finished_run, tmp_path, tiny_model_dir
) -> None:
    _, run_dir, rows = finished_run
    task = json.loads((run_dir / "export" / "task.json").read_text())
    assert task["model"]["source"] == str(tiny_model_dir.resolve())
    out = tmp_path / "out.jsonl"
    proc = pipeline(
        "predict", str(run_dir), "--input", str(rows), "--output", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["label"] in ("no", "yes")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty_input", r"--input .*empty\.jsonl: no rows to predict"),
        ("output_under_a_file", r"--output .*file\.txt/out\.jsonl: .*file\.txt is not a directory"),
        ("corrupt_adapter", r"adapter_model\.safetensors: not a readable safetensors file"),
        ("corrupt_task_json", r"task\.json: corrupt, not valid JSON"),
        ("corrupt_adapter_record", r"pipeline_adapter\.json: corrupt, not valid JSON"),
    ],
)
def test_predict_bad_input(finished_run, tmp_path, capsys, case, expected) -> None:
    _, run_dir, rows = finished_run
    export = tmp_path / "export"
    shutil.copytree(run_dir / "export", export)
    args = ["predict", str(export), "--input", str(rows)]
    if case == "empty_input":
        (tmp_path / "empty.jsonl").write_text("")
        args[3] = str(tmp_path / "empty.jsonl")
    elif case == "output_under_a_file":
        (tmp_path / "file.txt").write_text("x")
        args += ["--output", str(tmp_path / "file.txt" / "out.jsonl")]
    elif case == "corrupt_adapter":
        truncate(export / "adapter" / "adapter_model.safetensors", 3)
    elif case == "corrupt_task_json":
        truncate(export / "task.json", 10)
    else:
        truncate(export / "adapter" / "pipeline_adapter.json", 10)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(expected, err), err


def test_forced_train_stage_retrains_from_step_one(finished_run) -> None:
    """`--stages train --force` on a finished run is a fresh run, not a resume of its last
    checkpoint."""
    config, run_dir, _ = finished_run
    before = losses(run_dir)
    proc = pipeline("run", str(config), "--stages", "train", "--force")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is None
    assert losses(run_dir) == before  # every step ran again (same seed: same losses)


def test_export_killed_after_registering_adds_no_second_version(finished_run) -> None:
    """The crash window between MLflow creating the version and the stage committing: the re-run
    adopts the version it made (same run, same config) instead of registering another."""
    config, run_dir, _ = finished_run
    uri = f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    before = client.search_model_versions("name='tiny'")
    shutil.rmtree(run_dir / "export")  # as if killed before the stage committed
    assert pipeline("run", str(config)).returncode == 0
    after = client.search_model_versions("name='tiny'")
    assert [v.version for v in after] == [v.version for v in before]
    registered = json.loads((run_dir / "export" / "registered.json").read_text())
    assert registered["version"] == str(before[0].version)
    assert client.get_model_version_by_alias("tiny", "champion").version == before[0].version


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_evaluate_is_one_line_exit_3_and_a_killed_run(
    tmp_path, tiny_model_dir, sig
) -> None:
    """Ctrl-C or SIGTERM outside training: exit 3, one `interrupted:` line, no traceback, the
    evaluate stage left without output and the MLflow run marked KILLED; the re-run finishes."""
    config = write_config(
        tmp_path, tiny_model_dir, task={"test_limit": 200}, eval={"batch_size": 1}
    )
    run_dir = tmp_path / "runs" / "tiny"
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        proc = start_pipeline("run", str(config), stderr=err)
        deadline = time.monotonic() + 300
        while not (run_dir / ".evaluate.partial").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, sig)
        assert proc.wait(timeout=120) == 3
    text = err_file.read_text()
    assert "interrupted: stopped by" in text and "Traceback" not in text, text[-3000:]
    assert_no_partial_output(run_dir)
    assert not (run_dir / "evaluate").exists() and (run_dir / "train").exists()
    uri = f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"
    if sig == signal.SIGINT:  # Ctrl-C here, kill -9 below: the re-run redoes it exactly
        assert_rerun_equals_a_fresh_evaluate(config, run_dir)


def assert_rerun_equals_a_fresh_evaluate(config: Path, run_dir: Path) -> None:
    """The re-run after an interrupted evaluate finishes, and what it wrote is byte for byte
    what evaluating afresh writes (timing aside)."""
    assert main(["run", str(config), "--no-probe"]) == 0
    outputs = {
        name: (run_dir / "evaluate" / name).read_bytes()
        for name in ("metrics.json", "predictions.jsonl")
    }
    assert main(["run", str(config), "--stages", "evaluate", "--force", "--no-probe"]) == 0
    for name, content in outputs.items():
        assert (run_dir / "evaluate" / name).read_bytes() == content, name


def test_kill_9_during_evaluate_then_rerun(tmp_path, tiny_model_dir) -> None:
    config = write_config(
        tmp_path, tiny_model_dir, task={"test_limit": 200}, eval={"batch_size": 1}
    )
    run_dir = tmp_path / "runs" / "tiny"
    proc = start_pipeline("run", str(config), "--no-probe")
    deadline = time.monotonic() + 300
    while not (run_dir / ".evaluate.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert not (run_dir / "evaluate").exists()
    assert_rerun_equals_a_fresh_evaluate(config, run_dir)


def test_ctrl_c_during_training_checkpoints_like_sigterm(tmp_path, tiny_model_dir) -> None:
    config = write_config(
        tmp_path,
        tiny_model_dir,
        tracking={"uri": None},
        train={"steps": 40, "checkpoint_every": 100, "eval_every": 100},
        task={"train_limit": 64},
    )
    run_dir = tmp_path / "runs" / "tiny"
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        assert interrupt_training(config, run_dir, signal.SIGINT, stderr=err) == 3
    text = err_file.read_text()
    assert "preempted: training stopped by a signal" in text and "Traceback" not in text, text
    assert list((run_dir / ".scratch" / "train" / "checkpoints").glob("step_*"))


def test_credentials_in_the_tracking_uri_work_and_never_show(tmp_path, tiny_model_dir) -> None:
    """`http://user:secret@host` reaches the server (MLflow's basic-auth variables carry the
    credentials) and the password appears in no output, param, tag or written file."""
    with mlflow_server(tmp_path) as uri:
        with_secret = uri.replace("http://", "http://alice:s3cr3t-pw@")
        config = write_config(tmp_path, tiny_model_dir, tracking={"uri": with_secret})
        env = {k: v for k, v in ENV.items() if not k.startswith("MLFLOW_TRACKING_")}
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(config)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = tmp_path / "runs" / "tiny"
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr
    assert "s3cr3t-pw" not in json.dumps({**run.data.params, **run.data.tags})
    written = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")]
    assert not [p for p in written if "s3cr3t-pw" in p.read_text(errors="ignore")]


def test_two_configs_sharing_a_name_do_not_share_a_run(tmp_path, tiny_model_dir, capsys) -> None:
    first = write_config(tmp_path / "a", tiny_model_dir, output_dir=str(tmp_path / "runs"))
    second = write_config(tmp_path / "b", tiny_model_dir, output_dir=str(tmp_path / "runs"))
    assert main(["run", str(first), "--stages", "tokenize"]) == 0
    capsys.readouterr()
    assert main(["run", str(second), "--stages", "tokenize"]) == 2
    err = capsys.readouterr().err
    assert f"holds the run of {first.resolve()}; {second.resolve()} has the same name" in err, err
    assert main(["run", str(first), "--stages", "tokenize"]) == 0  # its own config still runs


@contextlib.contextmanager
def mounted(*args: str):
    """``mount ARGS... TARGET`` for the block (root only: skips where mounting is refused)."""
    target = Path(args[-1])
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_disk_full_is_one_line_and_leaves_nothing_partial(tmp_path, tiny_model_dir) -> None:
    with mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path / "full")) as full:
        config = write_config(
            tmp_path,
            tiny_model_dir,
            output_dir=str(full / "runs"),
            tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},  # the db elsewhere
        )
        proc = pipeline("run", str(config))
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
        assert_no_partial_output(full / "runs" / "tiny")


def test_predict_works_from_a_read_only_run_directory(finished_run, tmp_path) -> None:
    _, run_dir, rows = finished_run
    with mounted("--bind", str(run_dir), str(tmp_path / "ro")) as ro:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        proc = pipeline("predict", str(ro), "--input", str(rows), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["label"] in ("no", "yes")


def test_unicode_names_and_a_20k_character_token_run_through(tmp_path, tiny_model_dir) -> None:
    """Not an error: a run name in several scripts and a row holding one 20,000-character token
    train and register; the long row is truncated to max_length, never dropped."""
    long_row = rte_row(premise="Ünïcödé " + "x" * 20_000 + " 漢字 🙂")
    data = rte_dir(tmp_path, train=GOOD_RTE * 6 + long_row, val=GOOD_RTE * 6 + long_row)
    config = write_config(tmp_path, tiny_model_dir, name="tést-ünï漢字", task=rte_task(data))
    proc = pipeline("run", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tést-ünï漢字"
    stats = json.loads((run_dir / "tokenize" / "stats.json").read_text())
    assert stats["train"]["rows"] == 7 and stats["train"]["truncated"] == 1
    assert stats["train"]["max_context_tokens"] <= stats["max_length"]
    registered = json.loads((run_dir / "export" / "registered.json").read_text())
    assert registered["name"] == "tést-ünï漢字"
