"""`pipeline validate`'s time estimate against the measured wall time of the same run.

For each config (the main job, a BoolQ run, a generative SQuAD run; shortened with --set where
a full run takes hours on a CPU): `pipeline validate` in a fresh output directory (the probe
runs there, timing this machine), then `pipeline run` of the same command, timed; per stage the
estimate beside the stage's own seconds (its manifest), and the whole command's wall time
beside the estimate's total. Run it on an idle machine.

    OMP_WAIT_POLICY=PASSIVE PIPELINE_DATA_DIR=../shared/data python bench/estimate_accuracy.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import tables

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "main job (SST-2)": ("configs/gemma3_270m_sst2.yaml", []),
    "BoolQ, 40 steps": (
        "configs/gemma3_270m_boolq.yaml",
        ["train.steps=40", "train.eval_every=20", "task.test_limit=200"],
    ),
    "SQuAD (generation), 40 steps": (
        "configs/gemma3_270m_squad.yaml",
        ["train.steps=40", "train.eval_every=20", "task.dev_limit=50", "task.test_limit=100"],
    ),
}
UNITS = {"h": 3600, "min": 60, "s": 1}


def seconds(text: str) -> float:
    """``13 min 05 s`` / ``1 h 02 min`` / ``<1 s`` → seconds."""
    if text.startswith("<"):
        return 0.5
    pairs = re.findall(r"(\d+) (h|min|s)", text)
    return float(sum(int(n) * UNITS[unit] for n, unit in pairs))


def parse_estimate(output: str) -> dict[str, float]:
    line = next(x for x in output.splitlines() if x.startswith("estimate on this machine"))
    stages = line.split("): ", 1)[1]
    found = dict(re.findall(r"(tokenize|shard|train|evaluate|export) ([^,;]+)", stages))
    return {stage: seconds(value) for stage, value in found.items() if value != "cached"}


COMMAND = [sys.executable, "-m", "pipeline.cli"]


@contextlib.contextmanager
def private_cache() -> Iterator[dict[str, str]]:
    """An environment whose cache directory holds the converted models and no earlier probe."""
    from pipeline.engine.models import cache_dir

    with tempfile.TemporaryDirectory(prefix="probe-cache-") as private:
        for entry in cache_dir().iterdir():
            if entry.suffix != ".json" and not entry.name.startswith("."):
                (Path(private) / entry.name).symlink_to(entry)
        yield {**os.environ, "PIPELINE_CACHE_DIR": private}


def fresh_estimate(config: str, sets: list[str], env: dict[str, str]) -> tuple[dict, str]:
    """``pipeline validate``'s per-stage estimate (seconds) and resolved dtype."""
    validate = subprocess.run(
        [*COMMAND, "validate", config, *sets], cwd=REPO, capture_output=True, text=True, env=env
    )
    if validate.returncode != 0:
        raise SystemExit(f"validate {config} failed\n{validate.stderr[-3000:]}")
    precision = next(x for x in validate.stdout.splitlines() if x.startswith("model.dtype "))
    return parse_estimate(validate.stdout), precision.split("→")[-1].strip()


def with_estimate(row: dict, estimate: dict[str, float]) -> dict:
    total = sum(estimate.values())
    return {
        **row,
        "estimate_s": estimate,
        "estimate_total_s": round(total, 1),
        "total_ratio": round(total / row["wall_s"], 3),
    }


def measure(name: str, config: str, overrides: list[str], root: Path) -> dict:
    sets = [a for o in [*overrides, f"output_dir={root}"] for a in ("--set", o)]
    with private_cache() as env:  # `run` reuses the probe `validate` took, as a user's would
        estimate, dtype = fresh_estimate(config, sets, env)
        started = time.perf_counter()
        run = subprocess.run(
            [*COMMAND, "run", config, *sets], cwd=REPO, capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{name}: run failed\n{run.stderr[-3000:]}")
    run_dir = next(p.parent.parent for p in root.glob("*/export/manifest.json"))
    actual = {
        stage: json.loads((run_dir / stage / "manifest.json").read_text())["seconds"]
        for stage in estimate
    }
    row = {
        **quality(run_dir),
        "dtype": dtype,
        "run": name,
        "command": f"pipeline run {config} " + " ".join(f"--set {o}" for o in overrides),
        "stage_s": actual,
        "wall_s": round(wall, 1),
    }
    return with_estimate(row, estimate)


def quality(run_dir: Path) -> dict:
    """What the run scored: test metrics of the adapter and the zero-shot base, the dev curve,
    and the step whose adapter was kept."""
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    history = run_dir / "train" / "history.jsonl"
    rows = [json.loads(x) for x in history.read_text().splitlines() if x.strip()]
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    return {
        "test": {k: metrics[k] for k in ("adapter", "zero_shot") if k in metrics},
        "dev_curve": {
            r["step"]: {k.removeprefix("dev/"): v for k, v in r.items() if k.startswith("dev/")}
            for r in rows
            if any(k.startswith("dev/") for k in r)
        },
        "best_step": summary["best_step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help="names from RUNS")
    parser.add_argument("--reestimate", type=Path, help="JSON lines of runs measured before")
    args = parser.parse_args()
    os.environ.setdefault("PIPELINE_DATA_DIR", str(REPO.parent / "shared" / "data"))
    from pipeline.engine.hardware import configure_threads, describe_machine

    configure_threads()
    machine = describe_machine()
    rows = []
    measured = {}
    if args.reestimate:
        lines = args.reestimate.read_text().splitlines()
        measured = {row["run"]: row for row in map(json.loads, filter(None, lines))}
    for name in args.runs:
        config, overrides = RUNS[name]
        with tempfile.TemporaryDirectory(prefix="estimate-") as tmp:
            if name in measured:  # the run as measured, the estimate from a probe taken now
                sets = [a for o in [*overrides, f"output_dir={tmp}"] for a in ("--set", o)]
                with private_cache() as env:
                    estimate = fresh_estimate(config, sets, env)[0]
                result = with_estimate(measured[name], estimate)
                result["estimate_probed_after_run"] = True
            else:
                result = {**measure(name, config, overrides, Path(tmp)), "machine": machine}
        print(json.dumps(result), flush=True)
        rows.append(result)
    print("\n" + "\n".join(tables.estimate_accuracy(rows)))


if __name__ == "__main__":
    main()
