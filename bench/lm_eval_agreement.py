"""lm-evaluation-harness on what the pipeline exports, against `pipeline evaluate` on the same rows.

    python bench/lm_eval_agreement.py RUN_DIR [RUN_DIR ...] [--venv .cache/lm-eval-venv]

For each finished run: the test rows its evaluate stage scored become a local lm-eval task (a
JSONL of the rendered context and the gold index, a task YAML with the task's own choices as
``multiple_choice``, no target delimiter: the choices carry their leading space), and lm-eval's
``hf`` model scores them offline, on the run's merged checkpoint (``export.merged``: ADePT, PT,
LoRA) and, for PT and LoRA, on the PEFT adapter over the base (``peft=``). Its ``acc`` is set
beside evaluate's adapter accuracy, with the rows whose predicted choice differs. lm-eval lives
in its own venv (made here with pip if missing: ``pip install lm-eval`` pulls ~2 GB, ~8 min),
never in the project's. Runs should compute in float32 (``--set model.dtype=float32``), as
lm-eval does here: bf16 near-ties would flip between two different kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.engine.hardware import describe_machine  # noqa: E402
from pipeline.engine.predict import exported_task  # noqa: E402

TASK = "adept_local"


def ensure_venv(venv: Path) -> Path:
    """lm-eval's own virtual environment (the CPU torch of this project, lm-eval 0.4, PEFT)."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "lm_eval").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        constraints = str(REPO / "constraints.txt")
        subprocess.run([*pip, "-c", constraints, "lm-eval==0.4.*", "peft", "gguf"], check=True)
    return python


def predictions(run: Path) -> list[dict]:
    text = (run / "evaluate" / "predictions.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def local_task(run: Path, root: Path) -> tuple[Path, list[int]]:
    """The run's scored test rows as an lm-eval task under ``root``; the gold indices."""
    _, task = exported_task(run / "export")
    rows = predictions(run)
    lines = []
    for row in rows:
        fields = task.normalise(task.renamed({**row["fields"], "_line": row["line"]}), "test")
        lines.append({"context": task.context(fields), "label": row["label"]})
    data = root / "test.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    spec = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": list(task.choices),
        "doc_to_target": "{{label}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}],
    }
    (root / f"{TASK}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root, [x["label"] for x in lines]


def lm_eval(python: Path, model_args: str, include: Path, out: Path) -> list[int]:
    """lm-eval's predicted choice per row (argmax of its summed log-likelihoods), offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    command = [
        str(python), "-m", "lm_eval", "--model", "hf", "--model_args", model_args,
        "--tasks", TASK, "--include_path", str(include), "--batch_size", "8",
        "--device", "cpu", "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lm_eval failed:\n{done.stderr[-3000:]}")
    samples = sorted(out.rglob(f"samples_{TASK}_*.jsonl"))[-1]
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    rows.sort(key=lambda r: r["doc_id"])
    loglik = [[float(resp[0]) for resp in r["filtered_resps"]] for r in rows]
    return [max(range(len(ll)), key=ll.__getitem__) for ll in loglik]


def agreement(run: Path, python: Path) -> list[dict]:
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    description = json.loads((run / "export" / "task.json").read_text())
    record = json.loads((run / "export" / "adapter" / "pipeline_adapter.json").read_text())
    method = record["method_config"]["method"]
    ours = [row["predicted"] for row in predictions(run)]
    engines = {}
    if (run / "export" / "merged").is_dir():
        engines["merged checkpoint"] = f"pretrained={run / 'export' / 'merged'},dtype=float32"
    if (run / "export" / "adapter" / "adapter_config.json").is_file():
        base = record["base_model"]
        adapter = run / "export" / "adapter"
        engines["PEFT adapter"] = f"pretrained={base},peft={adapter},dtype=float32"
    results = []
    with tempfile.TemporaryDirectory(prefix="lm-eval-") as tmp:
        include, gold = local_task(run, Path(tmp))
        for engine, model_args in engines.items():
            theirs = lm_eval(python, model_args, include, Path(tmp) / engine.replace(" ", "_"))
            acc = sum(p == g for p, g in zip(theirs, gold, strict=True)) / len(gold)
            results.append({
                "run": run.name, "method": method, "engine": f"lm-eval hf, {engine}",
                "rows": len(gold), "lm_eval_acc": acc,
                "pipeline_acc": metrics["adapter"]["accuracy"],
                "rows_predicted_differently": sum(map(int.__ne__, theirs, ours)),
                "dtype": description["model"]["dtype"],
            })  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--venv", type=Path, default=REPO / ".cache" / "lm-eval-venv")
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('lm-eval'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for run in args.runs:
        for row in agreement(run, python):
            print(
                json.dumps({**row, "lm_eval": version, "machine": describe_machine()}), flush=True
            )


if __name__ == "__main__":
    main()
