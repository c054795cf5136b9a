"""The command line answers without the heavy libraries: --help, a command's --help and a
config that fails its checks import neither torch, transformers, mlflow, datasets nor
deepspeed (and the error output is what it always was)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.runner import STAGE_NAMES
from tests.helpers import ENV, REPO

TASK_DECLARATION_MODULES = {"pipeline.tasks.base", "pipeline.tasks.splits", "pipeline.tasks.data"}
HEAVY = ("torch", "transformers", "mlflow", "datasets", "deepspeed", "sklearn", "scipy")
PROBE = """
import json, sys
from pipeline.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
heavy = [m for m in {heavy!r} if m in sys.modules]
ours = sorted(m for m in sys.modules if m.startswith("pipeline."))
open(sys.argv[1], "w").write(json.dumps({{"code": code, "heavy": heavy, "pipeline": ours}}))
"""


def run_cli(tmp_path: Path, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "loaded.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), str(out), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=120,
    )
    assert out.is_file(), proc.stderr
    return json.loads(out.read_text()), proc


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"]])
def test_help_loads_no_heavy_library(tmp_path, args) -> None:
    loaded, proc = run_cli(tmp_path, *args)
    assert (loaded["code"], loaded["heavy"]) == (0, [])
    assert "usage: pipeline" in proc.stdout


BAD_CONFIGS = {
    "schema": (
        "name: x\ntrain:\n  steps: fast\n  stepz: 3\n",
        "invalid config\n  train.steps: expected int, got 'fast'\n  train.stepz: unknown key\n",
    ),
    "yaml": ("name: x\ntrain: [\n", "not valid YAML"),
    "method": (
        "name: x\nmethod:\n  name: dept\n  dropout: 0.1\n",
        "method.dropout: method 'dept' has no option 'dropout'",
    ),
    "task": ("name: x\ntask:\n  name: nope\n", "task.name: unknown task 'nope'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_is_rejected_without_heavy_libraries(tmp_path, case) -> None:
    text, message = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    loaded, proc = run_cli(tmp_path, "validate", str(config))
    assert (loaded["code"], loaded["heavy"]) == (2, [])
    assert not TASK_DECLARATION_MODULES & set(loaded["pipeline"])  # a task's name: a file check
    assert proc.stderr.startswith(f"error: {config}: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr
    loaded, run = run_cli(tmp_path, "run", str(config))  # the same check, the same words
    assert (loaded["code"], loaded["heavy"]) == (2, []) and run.stderr == proc.stderr


def test_the_cli_names_the_stages_the_runner_runs() -> None:
    """The CLI keeps the stage order without importing the stages (torch)."""
    assert cli.STAGE_ORDER == STAGE_NAMES


def test_every_known_error_class_is_where_the_cli_looks_for_it() -> None:
    import importlib

    for module, name in cli.KNOWN_ERRORS:
        error = getattr(importlib.import_module(module), name)
        assert issubclass(error, Exception) and error.__module__ == module


def test_every_lazy_task_export_resolves_to_its_submodule() -> None:
    from importlib import import_module

    import pipeline.tasks as tasks

    assert sorted(tasks.__all__) == sorted(tasks.SUBMODULE_OF)
    for name, submodule in tasks.SUBMODULE_OF.items():  # the object its submodule defines
        assert getattr(tasks, name) is getattr(import_module(f"pipeline.tasks.{submodule}"), name)
    with pytest.raises(AttributeError):
        tasks.nothing_like_this  # noqa: B018
