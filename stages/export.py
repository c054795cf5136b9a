"""Export: a self-contained, loadable adapter package.

Inputs:  train/best_adapter, evaluate/metrics.json.
Outputs: ``adapter/`` (adapter_config.json + adapter_model.safetensors), ``task.json`` (task name,
         template, verbaliser, max length, base-model reference, test metrics, config hash) and,
         with export.fold on ADePT, ``folded_embeddings.safetensors`` (the input-side table with the
         FFN folded in; the LM head keeps the original table).
Registry: with export.register_model (default) and tracking on, the package is logged as an MLflow
         pyfunc (models-from-code), registered as ``export.registered_model_name`` (default: the
         run name) with test metrics and the config hash as version tags, and given
         ``export.alias`` (default ``champion``). ``registered.json`` records name and version.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from safetensors.torch import save_file

from pipeline.methods import SoftPromptModel
from pipeline.runner import RunContext, write_json_atomic
from pipeline.tasks import get_task

TASK_FILE = "task.json"
FOLDED_FILE = "folded_embeddings.safetensors"


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    task = get_task(cfg.task.name)
    adapter_src = ctx.input_dir("train") / "best_adapter"
    shutil.copytree(adapter_src, ctx.work_dir / "adapter")
    metrics = json.loads((ctx.input_dir("evaluate") / "metrics.json").read_text())
    description = {
        "task": task.name,
        "template": task.template,
        "choices": list(task.choices),
        "max_length": cfg.task.max_length,
        "model": cfg.model.model_dump(exclude={"hub_token"}),
        "metrics": metrics.get("adapter", {}),
        "config_hash": cfg.config_hash,
    }
    write_json_atomic(ctx.work_dir / TASK_FILE, description)
    summary: dict[str, Any] = {"adapter": str(ctx.run_dir / "export" / "adapter")}
    if cfg.export.fold:
        model = SoftPromptModel.from_pretrained(ctx.base_model(), adapter_src)
        if model.config.method != "adept":
            raise ValueError(
                f"export.fold: only ADePT folds, this run trained {model.config.method}"
            )
        model.fold()
        save_file({"weight": model.folded_embeddings.contiguous()}, ctx.work_dir / FOLDED_FILE)
        summary["folded"] = True
    if cfg.export.register_model and ctx.tracker is not None and ctx.tracker.enabled:
        from pipeline.registry import register

        name = cfg.export.registered_model_name or cfg.name
        tags = {
            "config_hash": cfg.config_hash,
            "task": task.name,
            **{f"test_{k}": v for k, v in description["metrics"].items()},
        }
        version = register(ctx.work_dir, name, cfg.export.alias, tags)
        write_json_atomic(
            ctx.work_dir / "registered.json",
            {
                "name": name,
                "version": version,
                "alias": cfg.export.alias,
                "uri": f"models:/{name}@{cfg.export.alias}",
            },
        )
        summary.update(registered=name, version=version)
    return summary
