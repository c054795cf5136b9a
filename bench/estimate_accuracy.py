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
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def measure(name: str, config: str, overrides: list[str], root: Path) -> dict:
    sets = [a for o in [*overrides, f"output_dir={root}"] for a in ("--set", o)]
    command = [sys.executable, "-m", "pipeline.cli"]
    validate = subprocess.run(
        [*command, "validate", config, *sets], cwd=REPO, capture_output=True, text=True
    )
    estimate = parse_estimate(validate.stdout)
    started = time.perf_counter()
    run = subprocess.run([*command, "run", config, *sets], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{name}: run failed\n{run.stderr[-3000:]}")
    run_dir = next(p.parent for p in root.glob("*/export/manifest.json"))
    actual = {
        stage: json.loads((run_dir / stage / "manifest.json").read_text())["seconds"]
        for stage in estimate
    }
    return {
        "run": name,
        "command": f"pipeline run {config} " + " ".join(f"--set {o}" for o in overrides),
        "estimate_s": estimate,
        "stage_s": actual,
        "estimate_total_s": round(sum(estimate.values()), 1),
        "wall_s": round(wall, 1),
        "total_ratio": round(sum(estimate.values()) / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help="names from RUNS")
    args = parser.parse_args()
    os.environ.setdefault("PIPELINE_DATA_DIR", str(REPO.parent / "shared" / "data"))
    from pipeline.engine.hardware import configure_threads, describe_machine

    configure_threads()
    machine = describe_machine()
    rows = []
    for name in args.runs:
        config, overrides = RUNS[name]
        with tempfile.TemporaryDirectory(prefix="estimate-") as tmp:
            result = {**measure(name, config, overrides, Path(tmp)), "machine": machine}
        print(json.dumps(result), flush=True)
        rows.append(result)
    print("\n| run | stage | estimate | measured | estimate / measured |\n|---|---|---|---|---|")
    for r in rows:
        for stage, guess in r["estimate_s"].items():
            got = r["stage_s"][stage]
            ratio = f"{guess / got:.2f}" if got >= 5 else "—"
            print(f"| {r['run']} | {stage} | {guess:.0f} s | {got:.0f} s | {ratio} |")
        print(
            f"| {r['run']} | **whole command** | {r['estimate_total_s']:.0f} s | "
            f"{r['wall_s']:.0f} s | **{r['total_ratio']:.2f}** |"
        )


if __name__ == "__main__":
    main()
