"""`pipeline rest`: a registered model served by MLflow's scoring server behind the front, under
abuse (issue 47): malformed CSV, Parquet and JSON bodies, JSON nested 100,000 deep, a body over
the cap, a multi-megabyte row, null and missing fields in a long request. Every answer names
its cause; none carries a stack trace or an install path."""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from pipeline.cli import main
from tests.helpers import REPO, free_port, http_service, write_boolq_rows, write_config

MAX_BODY_MIB = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, data_dir):
    """A tiny BoolQ adapter, registered in a sqlite store, served by `pipeline rest`."""
    tmp = tmp_path_factory.mktemp("rest")
    assert main(["run", str(write_config(tmp, tiny_model_dir)), "--no-probe"]) == 0
    port = free_port()
    command = [
        sys.executable, "-m", "pipeline.cli", "rest", "models:/tiny@champion",
        "--port", str(port), "--max-body-mib", str(MAX_BODY_MIB),
    ]  # fmt: skip
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'runs' / 'mlflow.db'}",
        "PYTHONPATH": str(REPO),
    }
    rows = write_boolq_rows(tmp / "rows.jsonl", data_dir, 3)
    with http_service(command, tmp / "rest.log", f"http://127.0.0.1:{port}/ping", 300, env):
        yield f"http://127.0.0.1:{port}/invocations", tmp, rows


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_clean(body: str) -> None:
    assert "stack_trace" not in body and "Traceback" not in body, body
    assert "site-packages" not in body and str(REPO) not in body, body


def test_good_rows_are_answered_like_predict(served, tmp_path) -> None:
    url, run_root, rows_file = served
    expected = tmp_path / "expected.jsonl"
    run = str(run_root / "runs" / "tiny")
    assert main(["predict", run, "--input", str(rows_file), "--output", str(expected)]) == 0
    rows = [json.loads(x) for x in rows_file.read_text().splitlines()]
    status, body = post(url, json.dumps({"dataframe_records": rows}).encode())
    assert status == 200, body
    served_labels = [p["label"] for p in json.loads(body)["predictions"]]
    assert served_labels == [json.loads(x)["label"] for x in expected.read_text().splitlines()]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'passage,question\n"unclosed,is it\n', "text/csv", "CSV body: "),
        (b"PAR1 this is no parquet", "application/x-parquet", "Parquet body: not a readable"),
        (b"[" * 100_000, "application/json", "JSON body: nested too deeply to parse"),
        (b'{"dataframe_records": [', "application/json", "JSON body: malformed at line 1"),
    ],
    ids=["csv-unclosed-quote", "junk-parquet", "nested-json", "cut-json"],
)
def test_a_malformed_body_is_a_400_naming_the_cause(served, body, content_type, message) -> None:
    url, _, _ = served
    status, text = post(url, body, content_type)
    assert status == 400, (status, text)
    assert message in json.loads(text)["message"], text
    assert_clean(text)


@pytest.mark.parametrize(
    ("row", "field", "said"),
    [
        ({"passage": None, "question": "Is it?"}, "passage", "is null"),
        ({"passage": "p"}, "question", "is missing"),
    ],
    ids=["null", "missing"],
)
def test_null_and_missing_fields_are_named_in_a_long_request(served, row, field, said) -> None:
    url, _, _ = served
    rows = [{"passage": "The sky is blue.", "question": "Is the sky blue?"}] * 2000
    rows[1499] = row
    status, text = post(url, json.dumps({"dataframe_records": rows}).encode())
    assert status == 400, (status, text)
    assert f"row 1500: field '{field}' {said}" in json.loads(text)["message"], text
    assert_clean(text)


def test_a_body_over_the_cap_is_a_413_and_a_huge_row_is_cut_not_tokenized_whole(served) -> None:
    url, _, _ = served
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest("POST", parts.path)  # the headers alone: the server answers first
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY_MIB * 2**20 + 1))
    connection.endheaders()
    answer = connection.getresponse()
    text = answer.read().decode()
    connection.close()
    assert answer.status == 413 and f"limit of {MAX_BODY_MIB * 2**20:,} bytes" in text, text
    words = " ".join(f"word{i}" for i in range(600_000))  # ~6.5 MB of text, under the cap
    row = {"passage": words, "question": "Is it long?"}
    started = time.perf_counter()
    status, text = post(url, json.dumps({"dataframe_records": [row]}).encode())
    seconds = time.perf_counter() - started
    assert status == 200, text
    assert json.loads(text)["predictions"][0]["label"] in ("no", "yes")
    print(f"a 6.5 MB row over REST: {seconds:.1f} s")
