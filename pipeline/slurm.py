"""Slurm submission: tokenize once, training as an array (one task per sweep variant) that
depends on it, then evaluate/export as an array that runs only if every training task succeeded.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .config import load_config, sweep_variants

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "slurm" / "train_llama.sh"


class SlurmError(RuntimeError):
    """Slurm is missing or refused a job; the message says which command failed."""


def variant_table(config_path: str, overrides: list[str]) -> list[tuple[int, list[str], Path]]:
    """(index, overrides, run dir) per variant; every variant is validated."""
    base = load_config(config_path, overrides)
    rows = []
    for index, variant_overrides in enumerate(sweep_variants(base.sweep)):
        config = load_config(config_path, overrides, variant=index)
        rows.append((index, variant_overrides, config.run_dir))
    return rows


def sbatch(args: list[str], env: dict[str, str] | None = None) -> str:
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "pipeline submit needs Slurm: sbatch is not on PATH "
            "(bash scripts/slurm_cluster.sh up starts a local one)"
        )
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def submit(
    config_path: str,
    overrides: list[str],
    sbatch_args: list[str],
    max_parallel: int | None = None,
) -> dict[str, str]:
    """Submit tokenize → training array (afterok) → evaluate/export array (afterok)."""
    rows = variant_table(config_path, overrides)
    config = load_config(config_path, overrides)
    logs = config.sweep_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cli = f"{shlex.quote(sys.executable)} -m pipeline.cli"
    config_file = str(Path(config_path).resolve())
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    common = [f"--chdir={Path.cwd()}", *sbatch_args]
    array = f"0-{len(rows) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    quoted = shlex.quote(config_file)

    prep = sbatch(
        [
            *common,
            f"--job-name={config.name}-tokenize",
            f"--output={logs}/%x_%j.out",
            f"--wrap={cli} run {quoted} --variant 0 --stages tokenize {sets}",
        ]
    )
    # the training job inherits STAGES and PYTHON from sbatch's environment (a comma-separated
    # --export list would split STAGES)
    train = sbatch(
        [
            *common,
            f"--job-name={config.name}-train",
            f"--array={array}",
            f"--output={logs}/%x_%A_%a.out",
            f"--dependency=afterok:{prep}",
            str(TRAIN_SCRIPT),
            config_file,
            *_split_sets(overrides),
        ],
        env={"STAGES": "shard,train", "PYTHON": sys.executable},
    )
    evaluate = sbatch(
        [
            *common,
            f"--job-name={config.name}-evaluate",
            f"--array={array}",
            f"--output={logs}/%x_%A_%a.out",
            f"--dependency=afterok:{train}",
            f"--wrap={cli} run {quoted} --variant $SLURM_ARRAY_TASK_ID "
            f"--stages evaluate,export {sets}",
        ]
    )
    return {"tokenize": prep, "train": train, "evaluate": evaluate}


def _split_sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]
