"""Register an exported adapter as an MLflow pyfunc model version with tags and an alias."""

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


def register(export_dir: Path, name: str, alias: str, tags: dict[str, Any]) -> str:
    """Log the pyfunc in the active run, register it under ``name``, tag it, set ``alias``.

    Returns the new version (a string, as the REST API gives it).
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
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, alias, version)
    log.info("registered %s version %s as @%s", name, version, alias)
    return version
