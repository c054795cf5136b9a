"""What a tracking-server outage during training costs: training time and metrics lost.

    python bench/tracking_outage.py [--steps 120] [--outages 30 600]

Each case trains the README's SST-2 job (Gemma 3 270M, ADePT) for ``--steps`` steps, logging every
step, against a real ``mlflow server`` on 127.0.0.1. The first case has no outage; in the others
the server is killed once step 5 is logged and restarted ``OUTAGE`` seconds later with the same
store and port. A run that ends while the server is still down waits ``tracking.flush_timeout_s``
(60 s) and exits; the bench then runs ``pipeline run`` again once the server is back, which sends
what was kept. Per case it prints seconds per optimiser step, the train stage's seconds, the
wall time of the run, and the points the server holds against the history (lost, duplicated).
The same output goes to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.engine.hardware import describe_machine  # noqa: E402
from tests.helpers import (  # noqa: E402
    ENV,
    free_port,
    losses,
    mlflow_server,
    server_store,
    tracked_losses,
)


def write_config(root: Path, port: int, steps: int) -> Path:
    config = yaml.safe_load((REPO / "configs" / "gemma3_270m_sst2.yaml").read_text())
    config.update(name="outage", output_dir=str(root / "runs"))
    config["train"].update(steps=steps, log_every=1, eval_every=steps, warmup_steps=5)
    config["task"].update(dev_limit=50, test_limit=50)
    config["eval"]["zero_shot"] = False
    config["tracking"] = {"uri": f"http://127.0.0.1:{port}"}
    config["export"] = {"register_model": False}
    path = root / "outage.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_pipeline(config: Path, log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "a") as out:
        code = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(config)],
            cwd=REPO,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    return code, time.perf_counter() - start


def wait_for_history_step(history: Path, step: int, done: threading.Event) -> bool:
    while not done.is_set():
        if history.is_file() and len(history.read_text().splitlines()) >= step:
            return True
        time.sleep(0.2)
    return False


def case(outage: float, steps: int) -> dict[str, float | int | str]:
    root = Path(tempfile.mkdtemp(prefix=f"outage-{int(outage)}-"))
    port = free_port()
    config = write_config(root, port, steps)
    run_dir, log = root / "runs" / "outage", root / "pipeline.log"
    history = run_dir / ".scratch" / "train" / "history.jsonl"
    result: dict[str, float | int | str] = {"outage_s": outage, "dir": str(root)}
    done, exit_code, wall = threading.Event(), [None], [0.0]

    def train() -> None:
        exit_code[0], wall[0] = run_pipeline(config, log)
        done.set()

    worker = threading.Thread(target=train)
    with mlflow_server(root, port=port):
        worker.start()
        if outage == 0:
            worker.join()
        else:  # leaving the block kills the server once step 5 is logged
            result["killed_during_training"] = wait_for_history_step(history, 5, done)
    time.sleep(outage)
    with mlflow_server(root, port=port) as uri:
        worker.join()
        result["second_run"] = 0
        text = log.read_text()
        if "next `pipeline run` of this config sends them" in text:
            code, _ = run_pipeline(config, log)  # the server is back: send what was kept
            result["second_run"] = 1
            assert code == 0, log.read_text()[-3000:]
        points = tracked_losses(run_dir, server_store(root))
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        status = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status
    expected = list(enumerate(losses(run_dir), start=1))
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    result.update(
        exit_code=exit_code[0],
        wall_s=round(wall[0], 1),
        train_s=summary["seconds"],
        seconds_per_step=summary["seconds_per_step"],
        points_expected=len(expected),
        points_on_server=len(points),
        points_lost=len(set(expected) - set(points)),
        points_duplicated=len(points) - len(set(points)),
        run_status=status,
        warnings=log.read_text().count("not taking calls"),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--outages", type=float, nargs="+", default=[30, 600])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_outage.json")
    args = parser.parse_args()
    results = [case(outage, args.steps) for outage in [0, *args.outages]]
    base = results[0]
    for r in results:
        r["train_s_lost"] = round(float(r["train_s"]) - float(base["train_s"]), 1)
        r["wall_s_lost"] = round(float(r["wall_s"]) - float(base["wall_s"]), 1)
        print(json.dumps({**r, "machine": describe_machine()}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
