"""How much of the test suite is `pipeline` command-line start-up: runs pytest with a
``sitecustomize`` hook that records every CLI process the tests start (``python -m pipeline.cli``
or the ``pipeline`` script; its wall seconds, whether it loaded torch), then prints how many
there were, their seconds, and what the ones that never needed torch would have paid to import
torch + transformers before the CLI deferred them (that import, timed here in fresh processes).

    python bench/suite_cli_calls.py -- -n 2            # the suite as scripts/test.sh runs it
    python bench/suite_cli_calls.py -- -n 2 tests/test_bad_input.py

The environment is the caller's (run it with the variables scripts/test.sh sets). Processes that
end through ``os._exit`` (distributed ranks) are not seen; they load torch anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK = """
import atexit, json, os, sys, time

_STARTED = time.perf_counter()


def _record():
    first = sys.argv[0] if sys.argv else ""
    if not (first.endswith(os.path.join("pipeline", "cli.py")) or first.endswith("/pipeline")):
        return
    line = {
        "seconds": time.perf_counter() - _STARTED,
        "torch": "torch" in sys.modules,
        "command": sys.argv[1] if len(sys.argv) > 1 else "",
    }
    with open(os.environ["PIPELINE_CLI_CALLS"], "a") as out:
        out.write(json.dumps(line) + "\\n")


atexit.register(_record)
"""


def torch_import_seconds(repeats: int = 3) -> float:
    """Median wall seconds of `import torch, transformers` in a fresh interpreter."""
    timed = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, transformers"], check=True)
        timed.append(time.perf_counter() - started)
    return statistics.median(timed)


def summarize(calls: list[dict], suite_seconds: float, torch_seconds: float) -> dict:
    light = [c for c in calls if not c["torch"]]
    return {
        "suite_seconds": round(suite_seconds, 1),
        "cli_processes": len(calls),
        "cli_seconds": round(sum(c["seconds"] for c in calls), 1),
        "without_torch": len(light),
        "without_torch_seconds": round(sum(c["seconds"] for c in light), 1),
        "by_command_without_torch": {
            name: sum(1 for c in light if c["command"] == name)
            for name in sorted({c["command"] for c in light})
        },
        "torch_import_seconds": round(torch_seconds, 2),
        "saved_process_seconds": round(len(light) * torch_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hook_dir, log = Path(tmp) / "hook", Path(tmp) / "calls.jsonl"
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        env = dict(os.environ, PIPELINE_CLI_CALLS=str(log))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), env.get("PYTHONPATH")]))
        started = time.perf_counter()
        code = subprocess.run(
            [sys.executable, "-m", "pytest", *args.pytest_args], cwd=REPO, env=env
        ).returncode
        suite_seconds = time.perf_counter() - started
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    from pipeline.engine.hardware import describe_machine

    result = {
        "bench": "suite_cli_calls",
        "machine": describe_machine(),
        "pytest_args": args.pytest_args,
        "pytest_exit": code,
        **summarize(calls, suite_seconds, torch_import_seconds()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
