"""The tracking sender against a real `mlflow server` behind a real HTTP proxy that answers as a
shared server does under load: what is busy is retried, what is malformed is named and kept,
every point arrives once and in order, and the journal is compacted."""

from __future__ import annotations

import json
import logging

import mlflow
import pytest

from pipeline.tracking.outbox import JOURNAL, REJECTED, Outbox
from pipeline.tracking.tracker import HTTP_RETRY_DEFAULTS, quiet_http_retries
from tests.helpers import mlflow_server, received_points, scripted_proxy, server_store

LOG_BATCH = "/runs/log-batch"
MALFORMED = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric value"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("outbox-server")
    with mlflow_server(root) as uri:
        yield uri, server_store(root)


@pytest.fixture
def run_id(server) -> str:
    uri, _ = server
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("outbox") or client.get_experiment(
        client.create_experiment("outbox")
    )
    return client.create_run(experiment.experiment_id).info.run_id


@pytest.fixture
def no_client_retries(monkeypatch):
    """One request per call: the retries under test are the sender's own."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def log_steps(outbox: Outbox, steps, scope: str = "train:key:attempt") -> None:
    for step in steps:
        outbox.log_metrics({"train/loss": float(step)}, step, scope)


def test_a_busy_server_is_retried_and_loses_no_point(server, run_id, tmp_path, no_client_retries):
    uri, store = server
    busy = [(429, "Too Many Requests"), (503, "busy"), (408, "slow"), (502, "proxy"), (429, "")]
    with scripted_proxy(uri, {LOG_BATCH: list(busy)}) as (proxy, answered):
        outbox = Outbox(tmp_path, proxy, run_id, retry_seconds=0.02)
        log_steps(outbox, range(1, 31))
        assert outbox.close("FINISHED", timeout=60) == 0
    assert [s for p, s in answered if LOG_BATCH in p][: len(busy)] == [s for s, _ in busy]
    assert received_points(store, run_id, "train.loss") == [(s, float(s)) for s in range(1, 31)]
    assert not (tmp_path / REJECTED).exists()


def test_a_malformed_call_is_named_kept_and_not_sent_again(
    server, run_id, tmp_path, no_client_retries, caplog
):
    uri, store = server
    with scripted_proxy(uri, {LOG_BATCH: [(400, MALFORMED)]}) as (proxy, answered):
        outbox = Outbox(tmp_path, proxy, run_id, retry_seconds=0.02)
        with caplog.at_level(logging.WARNING):
            log_steps(outbox, [1])
            while not answered:  # the first batch is step 1 alone
                pass
            log_steps(outbox, [2, 3])
            assert outbox.close("FINISHED", timeout=60) == 0
    assert received_points(store, run_id, "train.loss") == [(2, 2.0), (3, 3.0)]
    assert (
        "tracking server refused 1 metric point(s) (train/loss steps 1–1) as malformed "
        "(HTTP 400: INVALID_PARAMETER_VALUE: bad metric value)" in caplog.text
    )
    kept = [json.loads(x) for x in (tmp_path / REJECTED).read_text().splitlines()]
    assert [(k["status"], k["calls"][0]["points"][0][:3]) for k in kept] == [
        (400, ["train/loss", 1.0, 1])
    ]


def test_the_journal_is_compacted_and_still_skips_repeated_steps_over_three_starts(
    server, run_id, tmp_path
):
    """The second start compacts the journal to one ``steps`` line; a resume that only repeats
    steps leaves that line the journal's sole memory of them, which the third start must read."""
    uri, store = server
    first = Outbox(tmp_path, uri, run_id, retry_seconds=0.02)
    log_steps(first, range(1, 6))
    assert first.close("FINISHED", timeout=60) == 0
    assert len((tmp_path / JOURNAL).read_text().splitlines()) == 6  # 5 metric calls + the end
    again = Outbox(tmp_path, uri, run_id, retry_seconds=0.02)  # a resumed run of the attempt
    lines = [json.loads(x) for x in (tmp_path / JOURNAL).read_text().splitlines()]
    assert [(e["op"], e["steps"]) for e in lines] == [
        ("steps", [["train:key:attempt", "train/loss", 5]])
    ]
    log_steps(again, [3, 4, 5])  # logged before the checkpoint: not again
    assert again.close("FINISHED", timeout=60) == 0
    third = Outbox(tmp_path, uri, run_id, retry_seconds=0.02)  # a second resume
    log_steps(third, [4, 5, 6])  # 4-5 are known from the compacted line alone
    assert third.close("FINISHED", timeout=60) == 0
    assert received_points(store, run_id, "train.loss") == [(s, float(s)) for s in range(1, 7)]


def test_each_http_call_is_bounded_to_two_retries(server, run_id, monkeypatch) -> None:
    """The tracker's defaults (unless the user set MLFLOW_HTTP_*): a call the server keeps
    refusing is sent three times (two retries, 1 s and 2 s apart) and then fails; each answer is
    awaited at most 30 s."""
    uri, _ = server
    for name in HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    with scripted_proxy(uri, {LOG_BATCH: [(503, "busy")] * 10}) as (proxy, answered):
        quiet_http_retries(proxy)
        from mlflow.entities import Metric
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT

        assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 30
        client = mlflow.MlflowClient(tracking_uri=proxy)
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.log_batch(run_id, metrics=[Metric("x", 1.0, 0, 1)], synchronous=True)
    assert [s for p, s in answered if LOG_BATCH in p] == [503, 503, 503]
