"""Export: a self-contained, loadable adapter package.

Inputs:  train/best_adapter, evaluate/metrics.json.
Outputs: ``adapter/`` (PEFT's files for PT and LoRA, pipeline_adapter.json: docs/methods.md),
         ``task.json`` (task name, template, verbaliser, max length, base-model reference, test
         metrics, config hash) and,
         with export.fold on ADePT, ``folded_embeddings.safetensors`` (the input-side table with the
         FFN folded in; the LM head keeps the original table); with export.merged (PT, ADePT, LoRA),
         ``merged/``: a standalone Hugging Face model whose prompt is a prefix of m special
         tokens (pipeline/engine/merge.py), with a model card and ``merge.json``.
Registry: with export.register_model (default) and tracking on, the package is logged as an MLflow
         pyfunc (models-from-code), registered as ``export.registered_model_name`` (default: the
         run name) with test metrics, the dev score and the config hash as version tags; it takes
         ``export.alias`` (default ``champion``) only if its dev score beats the holder's
         (pipeline/tracking/registry.py). ``registered.json`` records name, version, dev score
         and whether it took the alias.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from pipeline.core.stage import WHOLE_CONFIG, RunContext, Stage, read_manifest
from pipeline.engine.merge import MERGED_DIR, merge_adapter, model_card, save_merged
from pipeline.engine.models import (
    base_provenance,
    context_base_model,
    load_model,
    load_tokenizer,
)
from pipeline.engine.predict import TASK_FILE
from pipeline.methods import SoftPromptModel
from pipeline.util.files import write_json_atomic

ADAPTER, FOLDED_FILE, REGISTERED = "adapter", "folded_embeddings.safetensors", "registered.json"


def model_reference(cfg) -> str:
    """The base model as task.json records it: a local directory as an absolute path."""
    path = Path(cfg.model.source).expanduser()
    return str(path.resolve()) if path.is_dir() else cfg.model.source


def write_merged(ctx: RunContext, adapter_src: Path, description: dict[str, Any]) -> str:
    """``merged/``: the adapter merged into a fresh, unquantised copy of the base (merging
    rewrites the tables in place); returns the prefix text."""
    m = ctx.config.model
    base = load_model(m.source, m.compute_dtype, m.attention, load_in_8bit=False, token=m.hub_token)
    tokenizer = copy.deepcopy(load_tokenizer(m.source, token=m.hub_token))  # merging adds tokens
    model = SoftPromptModel.from_pretrained(base, adapter_src).eval()
    prefix = merge_adapter(model, tokenizer)
    out = ctx.work_dir / MERGED_DIR
    prefix = save_merged(model, tokenizer, prefix, out)
    model_type = base.config.get_text_config().model_type
    card = model_card(prefix, description, model.config.method, model_type)
    (out / "README.md").write_text(card)
    return prefix.text


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    task = cfg.task.definition()
    adapter_src = ctx.input_dir("train") / "best_adapter"
    shutil.copytree(adapter_src, ctx.work_dir / ADAPTER)
    metrics = json.loads((ctx.input_dir("evaluate") / "metrics.json").read_text())
    description = {
        "task": task.name,
        "template": task.template,
        "fields": [*task.required_fields, *task.choice_fields],
        "choices": list(task.choices),
        "task_spec": task.model_dump(mode="json"),  # the declaration: predict needs no registry
        "max_length": cfg.task.max_length,
        # a local model path resolved, so `pipeline predict` works from any directory
        "model": {**cfg.model.model_dump(exclude={"hub_token"}), "source": model_reference(cfg)},
        "metrics": metrics.get("adapter", {}),
        "config_hash": cfg.config_hash,
    }
    write_json_atomic(ctx.work_dir / TASK_FILE, description)
    summary: dict[str, Any] = {"adapter": str(ctx.run_dir / "export" / "adapter")}
    if cfg.export.fold:
        model = SoftPromptModel.from_pretrained(context_base_model(ctx), adapter_src)
        model.fold()  # TypeError for a method that does not fold (validate catches it first)
        save_file({"weight": model.folded_embeddings.contiguous()}, ctx.work_dir / FOLDED_FILE)
        summary["folded"] = True
    if cfg.export.merged:
        summary["merged_prefix"] = write_merged(ctx, adapter_src, description)
    if cfg.export.register_model and ctx.tracker is not None and ctx.tracker.enabled:
        from mlflow.exceptions import MlflowException

        from pipeline.tracking.registry import ADAPTER_TAG, register
        from pipeline.tracking.tracker import TrackingError

        name = cfg.export.registered_model_name or cfg.name
        tags = {
            "config_hash": cfg.config_hash,
            ADAPTER_TAG: read_manifest(ctx.input_dir("train"))["digest"],
            "merged": str(bool(cfg.export.merged)).lower(),
            "base_model": base_provenance(cfg.model.source),
            "task": task.name,
            **{f"test_{k}": v for k, v in description["metrics"].items()},
        }
        if metrics.get("below_zero_shot_on_dev"):  # the alias rule stays; the version says so
            tags["below_zero_shot_on_dev"] = "true"
        train = json.loads((ctx.input_dir("train") / "train_summary.json").read_text())
        dev_score = train[f"best_dev_{task.selection_metric}"]
        tracker = ctx.tracker
        try:
            version, holds = register(
                tracker.client,
                tracker.run_id,
                ctx.work_dir,
                ctx.run_dir / "export",
                name,
                cfg.export.alias,
                tags,
                dev_score,
            )
        except MlflowException as exc:
            raise TrackingError(
                f"registering {name!r} on {tracker.uri} failed ({str(exc).splitlines()[0]}); "
                "everything before export is kept: re-run the same command to register"
            ) from None
        write_json_atomic(
            ctx.work_dir / REGISTERED,
            {
                "name": name,
                "version": version,
                "uri": f"models:/{name}/{version}",
                "dev_score": dev_score,
                # whether this version took the alias when registered (a better one may since)
                "alias": cfg.export.alias if holds else None,
            },
        )
        summary.update(registered=name, version=version, alias=holds)
    return summary


STAGE = Stage(
    name="export",
    run=run,
    upstream=("tokenize", "train", "evaluate"),
    config_keys=(WHOLE_CONFIG,),  # task.json records the hash of the whole config
    outputs=(ADAPTER, TASK_FILE),
    tracked={TASK_FILE: "export"},
)
