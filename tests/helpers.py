"""Helpers shared by test modules (fixtures live in conftest.py): tiny random models, method
wrappers, run configs, subprocess runs of the CLI, a real `mlflow server`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from pipeline.methods import DePT, SoftPromptModel

REPO = Path(__file__).resolve().parents[1]
ENV = dict(  # the repository first; the caller's PYTHONPATH after it (bench/suite_cli_calls.py)
    os.environ,
    OMP_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
)
TINY_VOCAB = 1000
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        **TINY_DIMS,
        max_position_embeddings=512,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma(seed: int = 0) -> Gemma3ForCausalLM:
    """Gemma-3 text model: scaled embeddings, tied head; soft-capping on to cover that path."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=TINY_VOCAB,
        **TINY_DIMS,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=512,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return Gemma3ForCausalLM(config).eval()


def tiny_decoder(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random Qwen 2, Qwen 3 or Mistral (the other model types the shared prefix
    supports), same dims as the Llama fixture."""
    import transformers

    classes = {
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
    }
    config_name, model_name = classes[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(
        vocab_size=TINY_VOCAB,
        **TINY_DIMS,
        max_position_embeddings=512,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return getattr(transformers, model_name)(config).eval()


def sliding_gemma(window: int) -> torch.nn.Module:
    """A tiny Gemma-3 whose every layer uses a small sliding window (index-distance mask)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=TINY_VOCAB,
        **TINY_DIMS,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=window,
        layer_types=["sliding_attention"] * TINY_DIMS["num_hidden_layers"],
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return Gemma3ForCausalLM(config).eval()


M = 8


def make(method, base, **kw) -> SoftPromptModel:
    if method is DePT:
        kw.setdefault("max_length", 32)
    return method(base, num_virtual_tokens=M, **kw)


def random_batch(batch: int = 3, length: int = 12, vocab: int = 1000, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, length), generator=g)
    return input_ids, torch.ones_like(input_ids)


def perturb(module: torch.nn.Module, seed: int = 3, scale: float = 0.05) -> None:
    """Give every trainable tensor non-trivial values (the offset is zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def write_boolq_rows(path, data_dir, n: int):
    """The first n BoolQ test rows (protocol split) as unlabeled JSONL; returns the path."""
    import json

    from pipeline.tasks import get_task, load_task_splits

    rows = load_task_splits(get_task("boolq"), data_dir, {"test": n})["test"][0]
    path.write_text(
        "".join(
            json.dumps({"passage": r["passage"], "question": r["question"]}) + "\n" for r in rows
        )
    )
    return path


def write_config(tmp_path: Path, model_dir: Path, **sections) -> Path:
    config = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "model": {"source": str(model_dir), "dtype": "float32", "attention": "sdpa"},
        "method": {"name": "adept", "num_virtual_tokens": 4, "budget_tokens": 10},
        "task": {
            "name": "boolq",
            "max_length": 96,
            "train_limit": 32,
            "dev_limit": 12,
            "test_limit": 12,
        },
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "log_every": 1, "warmup_steps": 1},
        "eval": {"batch_size": 8},
    }
    for key, value in sections.items():
        if not isinstance(value, dict):  # a top-level value (output_dir, name)
            config[key] = value
        elif key == "method" and value.get("name", "adept") != "adept":
            config[key] = dict(value)  # another method: its own section, not merged with ADePT's
        else:
            config.setdefault(key, {}).update(value)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pipeline(*args: str, **run) -> subprocess.CompletedProcess:
    """`pipeline ARGS` in a subprocess (repo root, test env unless given), output captured."""
    run = {"cwd": REPO, "env": ENV, "timeout": 900, **run}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, **run
    )


def start_pipeline(*args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """`pipeline ARGS` in the background, in its own session (signal it with os.killpg)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def losses(run: Path) -> list[float]:
    history = (run / "train" / "history.jsonl").read_text().splitlines()
    return [json.loads(x)["train/loss"] for x in history]


def tracked_losses(run: Path, store: Path | None = None) -> list[tuple[int, float]]:
    """(step, train loss) in the order the tracking store received them: its sqlite rows in
    insertion order. ``store``: the store's database (an `mlflow server`'s backend store);
    default the run's embedded ``mlflow.db``."""
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    return received_points(store or run.parent / "mlflow.db", run_id, "train.loss")


def received_points(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, in the order the sqlite store ``store`` received them."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(store)) as db:
        rows = db.execute(
            "SELECT step, value FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY rowid",
            (run_id, key),
        ).fetchall()
    return [(int(step), float(value)) for step, value in rows]


def wait_for_step(history: Path, step: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if history.is_file() and any(
            json.loads(x)["step"] >= step for x in history.read_text().splitlines() if x.strip()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged (exit {proc.poll()})")


def interrupt_training(config: Path, run_dir: Path, sig: int, stderr=subprocess.DEVNULL) -> int:
    """Start `pipeline run CONFIG`, send ``sig`` once step 3 is logged; the exit code."""
    proc = start_pipeline("run", str(config), stderr=stderr)
    wait_for_step(run_dir / ".scratch" / "train" / "history.jsonl", 3, proc)
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_service(
    command: list[str],
    log_path: Path,
    health_url: str,
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
) -> Iterator[None]:
    """Run ``command`` (its own session, output to ``log_path``, ``env`` added to ours) until
    ``health_url`` answers 200; stop the whole process group afterwards."""
    env = dict(
        os.environ,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        **(env or {}),
    )
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(health_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def server_store(root: Path) -> Path:
    return root / "server.db"


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 90.0, port: int | None = None) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 storing under ``root`` (its database:
    :func:`server_store`); the same ``root`` and ``port`` again restart the same server."""
    port = port or free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{server_store(root)}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with http_service(command, root / "mlflow-server.log", f"{uri}/health", timeout):
        yield uri


def post_json(url: str, body: bytes) -> tuple[int, str]:
    """POST a JSON body; (status, response text), HTTP errors included."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


GOOD_RTE = '{"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": "entailment"}\n'


def rte_dir(root: Path, train: str = GOOD_RTE * 8, val: str = GOOD_RTE * 8) -> Path:
    d = root / "data" / "superglue" / "rte"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text(train)
    (d / "val.jsonl").write_text(val)
    return root / "data"


def sst2_dir(root: Path, train: str) -> Path:
    d = root / "data" / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(train)
    (d / "dev.tsv").write_text("sentence\tlabel\ngood .\t1\n")
    return root / "data"


def rte_task(data: Path) -> dict:
    return {
        "name": "rte",
        "data_dir": str(data),
        "train_limit": None,
        "dev_limit": None,
        "test_limit": None,
    }


def assert_accuracy_is_its_predictions(run: Path) -> None:
    """The adapter's test accuracy is the share of predictions.jsonl rows whose predicted choice
    is their label (recounted here), and zero-shot's is a whole number of those rows."""
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    lines = (run / "evaluate" / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    assert len(rows) == metrics["rows"] > 0
    correct = sum(r["predicted"] == r["label"] for r in rows)
    assert metrics["adapter"]["accuracy"] == correct / len(rows)
    if "zero_shot" in metrics:
        right = metrics["zero_shot"]["accuracy"] * len(rows)
        assert abs(right - round(right)) < 1e-9


def assert_no_partial_output(run_dir: Path) -> None:
    if not run_dir.exists():
        return
    assert not list(run_dir.glob(".*.partial")), list(run_dir.glob(".*.partial"))
    for stage in ("tokenize", "shard", "train", "evaluate", "export"):
        if (run_dir / stage).exists():
            assert (run_dir / stage / "manifest.json").is_file(), stage


@contextlib.contextmanager
def scripted_proxy(target: str, script: dict[str, list[tuple[int, str]]]) -> Iterator[tuple]:
    """A real HTTP proxy in front of ``target`` (as a shared server sits behind one): the first
    requests whose path contains a key of ``script`` get that key's (status, body) answers in
    turn, everything else is forwarded. Yields (its URL, the (path, status) answers it gave)."""
    import http.server
    import threading

    answered: list[tuple[str, int]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                scripted = next((v for k, v in script.items() if k in self.path and v), None)
                status, text = scripted.pop(0) if scripted else (None, "")
            if status is None:
                request = urllib.request.Request(
                    target + self.path,
                    data=body if body else None,
                    method=self.command,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, payload = error.code, error.read()
            else:
                payload = text.encode()
            with lock:
                answered.append((self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answered
    finally:
        server.shutdown()
        server.server_close()


def split_digest(path: Path) -> dict[str, Any]:
    """Rows and a sha256 of a saved split's features and every column's values (independent of
    how its Arrow files are chunked)."""
    import datasets

    data = datasets.load_from_disk(str(path))
    digest = hashlib.sha256(json.dumps(data.features.to_dict(), sort_keys=True).encode())
    for name in data.column_names:
        digest.update(name.encode())
        digest.update(json.dumps(data.data.column(name).to_pylist()).encode())
    return {"rows": len(data), "sha256": digest.hexdigest()}
