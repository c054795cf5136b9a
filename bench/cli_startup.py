"""Start-up time of the command line: `pipeline --help`, `validate` of a config with a mistake
and of the main job's config (--no-probe: the plan without the time estimate), each beside the
baseline `python -c "import yaml, pydantic"`, timed in round-robin order in this one run
(median of --repeats). Goal: --help and the bad-config validate within 2x of the baseline.

    python bench/cli_startup.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAD_CONFIG = "name: x\ntrain:\n  steps: fast\n"
ONE_MODEL = (  # what any pydantic schema check pays: the model machinery pydantic loads lazily
    "import yaml\nfrom pydantic import BaseModel\nclass Config(BaseModel):\n    steps: int = 1\n"
    "Config.model_validate(yaml.safe_load('steps: 2'))"
)


def commands(bad: Path) -> dict[str, list[str]]:
    pipeline = [sys.executable, "-m", "pipeline.cli"]
    return {
        "baseline: import yaml, pydantic": [sys.executable, "-c", "import yaml, pydantic"],
        "reference: yaml + one pydantic model": [sys.executable, "-c", ONE_MODEL],
        "pipeline --help": [*pipeline, "--help"],
        "pipeline validate BAD": [*pipeline, "validate", str(bad)],
        "pipeline validate main job": [
            *pipeline,
            "validate",
            str(REPO / "configs" / "gemma3_270m_sst2.yaml"),
            "--no-probe",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text(BAD_CONFIG)
        timed = commands(bad)
        seconds: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.repeats):
            for name, command in timed.items():
                started = time.perf_counter()
                subprocess.run(command, cwd=REPO, capture_output=True, check=False)
                seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    baseline = medians["baseline: import yaml, pydantic"]
    from pipeline.engine.hardware import describe_machine  # after timing: torch loads here

    result = {
        "bench": "cli_startup",
        "machine": describe_machine(),
        "repeats": args.repeats,
        "median_seconds": {k: round(v, 3) for k, v in medians.items()},
        "ratio_to_baseline": {k: round(v / baseline, 2) for k, v in medians.items()},
    }
    print(json.dumps(result))
    print("\n| command | median s | × baseline |\n|---|---|---|")
    for name, value in medians.items():
        print(f"| `{name}` | {value:.3f} | {value / baseline:.2f} |")


if __name__ == "__main__":
    main()
