"""Register an exported adapter as an MLflow pyfunc model version with tags and an alias.

The alias rule (one for every run, sweep variant and study job registering under one name):
each new version is tagged with its dev score (``dev_score``: the task's selection metric on the
dev split, never test), and the alias moves to it only when that score beats the current
holder's; ties keep the holder. A holder without the tag (registered before this rule) yields.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_CODE = Path(__file__).resolve().parent / "pyfunc.py"


def runtime_requirements() -> list[str]:
    """The project's own dependency pins (no inference: that would load the base model)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("adept-pipeline") or []
    except PackageNotFoundError:
        return ["torch==2.13.0", "transformers", "mlflow==3.17.2", "safetensors", "pandas"]
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]


DEV_SCORE_TAG = "dev_score"


def claim_alias(client, name: str, alias: str, version: str, dev_score: float) -> bool:
    """Point ``alias`` at ``version`` if its dev score beats the holder's; True when it moved."""
    import mlflow

    try:
        holder = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:  # no holder yet
        holder = None
    held = holder.tags.get(DEV_SCORE_TAG) if holder is not None else None
    if held is not None and dev_score <= float(held):
        log.info("%s@%s stays on version %s (dev %s)", name, alias, holder.version, held)
        return False
    client.set_registered_model_alias(name, alias, version)
    return True


def register(
    export_dir: Path, name: str, alias: str, tags: dict[str, Any], dev_score: float
) -> tuple[str, bool]:
    """Log the pyfunc in the active run, register it under ``name``, tag it (``dev_score``
    too), and give it ``alias`` if it earns it (:func:`claim_alias`).

    Returns the new version (a string, as the REST API gives it) and whether it holds the alias.
    """
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={"export_dir": str(export_dir)},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=runtime_requirements(),
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {**tags, DEV_SCORE_TAG: dev_score}.items():
        client.set_model_version_tag(name, version, key, str(value))
    holds = claim_alias(client, name, alias, version, dev_score)
    log.info("registered %s version %s%s", name, version, f" as @{alias}" if holds else "")
    return version, holds
