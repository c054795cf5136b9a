"""The DeepSpeed JSON (``ds_configs/``) filled from the pipeline config, and ZeRO-3 loading."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.config import PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def ds_config_path(config: PipelineConfig) -> Path:
    name = config.distributed.ds_config or f"zero{config.distributed.zero_stage}.json"
    for candidate in (Path(name), REPO_ROOT / "ds_configs" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"distributed.ds_config: {name} not found (looked in ds_configs/)")


def fill_ds_config(config: PipelineConfig, world_size: int) -> dict[str, Any]:
    """Load the DeepSpeed JSON and replace its "auto" values from the pipeline config."""
    path = ds_config_path(config)
    data = json.loads(path.read_text())
    train = config.train
    values = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.max_grad_norm,
        "bf16.enabled": config.model.compute_dtype == "bfloat16" and not config.model.load_in_8bit,
        "fp16.enabled": config.model.compute_dtype == "float16",
        "zero_optimization.stage": config.distributed.zero_stage,
    }

    def fill(node: dict[str, Any], prefix: str = "") -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                fill(value, f"{dotted}.")
            elif value == "auto":
                if dotted not in values:
                    raise ValueError(f'{path}: no pipeline value fills "auto" at {dotted}')
                node[key] = values[dotted]

    fill(data)
    stage = data.get("zero_optimization", {}).get("stage")
    if stage != config.distributed.zero_stage:
        raise ValueError(
            f"{path}: zero_optimization.stage={stage} but distributed.zero_stage="
            f"{config.distributed.zero_stage}"
        )
    return data


@contextlib.contextmanager
def zero3_loading(config: PipelineConfig, world_size: int) -> Iterator[None]:
    """Mode (a) under ZeRO-3: models built or loaded inside are partitioned at construction
    (transformers sees a live ``HfDeepSpeedConfig``), so per-rank memory is 1/world of the
    frozen weights from the start. A no-op for other modes and without DeepSpeed."""
    dist = config.distributed
    if not (dist.deepspeed and dist.zero_stage == 3 and not config.model.load_in_8bit):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(fill_ds_config(config, world_size))  # noqa: F841 (weakref)
    yield
