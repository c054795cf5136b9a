"""Serving a finished run, measured: the merged checkpoint in plain transformers, and REST.

    python bench/serving.py runs/gemma3_270m_sst2_adept [--version 2] [--rows 64]

The run must have been exported with ``export.merged: true`` and registered (tracking on), e.g.
``pipeline run configs/gemma3_270m_sst2.yaml --set export.merged=true``. Prints:

1. The merged model scored with plain ``AutoModelForCausalLM`` on every test row the evaluate
   stage scored (its token ids, the prefix ids first), against ``predictions.jsonl`` (the adapter
   path): largest |score difference|, predicted-label agreement, accuracy both ways, seconds per
   row (batch 1, full-vocabulary logits, as a plain runtime computes them). The model runs in
   the dtype it was saved in, i.e. the run's ``model.dtype``: with bfloat16 the two paths differ
   by bf16 rounding (different kernels and summation orders), not by the merge; the fp32
   equality is what ``tests/test_merge.py`` checks.
2. ``mlflow models serve -m models:/NAME/VERSION --env-manager local`` answering ``--rows``
   test rows: seconds per row for requests of 1 row and of all rows at once, plus startup time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.engine.hardware import describe_machine  # noqa: E402
from pipeline.tasks import get_task, load_task_splits  # noqa: E402
from tests.helpers import free_port, http_service, post_json  # noqa: E402


def merged_agreement(run_dir: Path) -> dict[str, float]:
    merged = run_dir / "export" / "merged"
    prefix = json.loads((merged / "merge.json").read_text())["ids"]
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="auto").eval()  # the run's dtype
    test = datasets.load_from_disk(str(run_dir / "tokenize" / "test"))
    adapter = [json.loads(x) for x in (run_dir / "evaluate" / "predictions.jsonl").open()]
    worst, agree, correct, started = 0.0, 0, 0, time.perf_counter()
    for ours, context, choices in zip(
        adapter, test["context_ids"], test["choice_ids"], strict=True
    ):
        scores = []
        for answer in choices:
            ids = prefix + context + answer
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, len(ids) - len(answer) - 1 : -1]
            picked = logits.float().log_softmax(-1)[torch.arange(len(answer)), torch.tensor(answer)]
            scores.append(picked.sum().item())
        worst = max(worst, *(abs(a - b) for a, b in zip(scores, ours["scores"], strict=True)))
        predicted = scores.index(max(scores))
        agree += predicted == ours["predicted"]
        correct += predicted == ours["label"]
    rows = len(adapter)
    return {
        "rows": rows,
        "max_abs_score_diff": worst,
        "label_agreement": agree / rows,
        "merged_accuracy": correct / rows,
        "adapter_accuracy": sum(r["predicted"] == r["label"] for r in adapter) / rows,
        "plain_hf_s_per_row": (time.perf_counter() - started) / rows,
    }


def rest_latency(run_dir: Path, version: str, rows: int) -> dict[str, float]:
    registered = json.loads((run_dir / "export" / "registered.json").read_text())
    config = json.loads((run_dir / "config.resolved.json").read_text())
    task = json.loads((run_dir / "export" / "task.json").read_text())
    data = Path(os.environ["PIPELINE_DATA_DIR"])  # the raw text, as a client would send it
    test_rows = load_task_splits(get_task(task["task"]), data, {"test": rows})["test"][0]
    records = [{field: row[field] for field in task["fields"]} for row in test_rows]
    uri = config["tracking"]["uri"] or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", f"models:/{registered['name']}/{version}", "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # mlflow starts uvicorn by name
    env = {"MLFLOW_TRACKING_URI": uri, "PATH": path}
    started = time.perf_counter()
    log = Path("/tmp") / f"serve-{port}.log"
    with http_service(command, log, f"http://127.0.0.1:{port}/ping", 600, env):
        startup = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/invocations"
        post_json(url, json.dumps({"dataframe_records": records[:1]}).encode())  # warm-up
        started = time.perf_counter()
        for record in records:
            status, body = post_json(url, json.dumps({"dataframe_records": [record]}).encode())
            assert status == 200, body
        one = (time.perf_counter() - started) / rows
        started = time.perf_counter()
        status, body = post_json(url, json.dumps({"dataframe_records": records}).encode())
        assert status == 200, body
        batched = (time.perf_counter() - started) / rows
    return {"startup_s": startup, "s_per_row_1_per_request": one, "s_per_row_all_in_one": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--version", help="registered version to serve (default: this run's)")
    parser.add_argument("--rows", type=int, default=64, help="test rows sent to the server")
    parser.add_argument("--only", choices=("merged", "rest"), help="run one of the two parts")
    args = parser.parse_args()
    version = (
        args.version
        or json.loads((args.run_dir / "export" / "registered.json").read_text())["version"]
    )
    results: dict = {"machine": describe_machine()}
    if args.only != "rest":
        results["merged"] = merged_agreement(args.run_dir)
    if args.only != "merged":
        results["rest"] = rest_latency(args.run_dir, str(version), args.rows)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
