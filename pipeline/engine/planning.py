"""Plans without weights: model dims, parameter budget, memory per rank (``pipeline validate``).

Model dims come from the model's config.json when it is reachable (local path, converted Gemma
cache, hub cache); otherwise from a built-in table of the models our configs name, so the 7B
configs validate on a machine that cannot download them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..core.config import PipelineConfig
from .models import GEMMA_PACKAGE_SOURCE, cache_dir

log = logging.getLogger(__name__)

KNOWN_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "meta-llama/Llama-2-7b-hf": (
        "llama",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
        ),
    ),
    GEMMA_PACKAGE_SOURCE: (
        "gemma3_text",
        dict(
            vocab_size=262144,
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
        ),
    ),
}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_BYTES_PER_PARAM = 16  # fp32 param + fp32 grad + two fp32 moments


def model_spec(source: str) -> tuple[PretrainedConfig, str]:
    """(config, where it came from) for ``source`` without loading weights or downloading."""
    local = cache_dir() / "gemma3-270m-hf" if source == GEMMA_PACKAGE_SOURCE else Path(source)
    if (local / "config.json").is_file():
        return AutoConfig.from_pretrained(local), str(local / "config.json")
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True), "hub cache"
    except (OSError, ValueError):
        pass
    if source in KNOWN_MODELS:
        model_type, dims = KNOWN_MODELS[source]
        return AutoConfig.for_model(model_type, **dims), "built-in spec (offline)"
    raise FileNotFoundError(
        f"model.source {source!r}: no config.json found locally and it is not a built-in spec; "
        "download it once or point model.source at a local directory"
    )


def count_parameters(config: PretrainedConfig) -> dict[str, int]:
    """Total parameters and those held in 8-bit-quantisable Linear layers (meta device)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    linear = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )
    return {"total": total, "linear": linear}


def plan(config: PipelineConfig) -> dict[str, Any]:
    spec, origin = model_spec(config.model.source)
    d = spec.get_text_config().hidden_size
    method = config.method_config(spec.get_text_config())
    trainable = method.trainable_parameters(d)
    budget_tokens = getattr(method, "budget_tokens", method.prompt_length)  # PT: its own L
    counts = count_parameters(spec)
    world = config.distributed.world_size
    ds = config.distributed
    if config.model.load_in_8bit:
        frozen = counts["linear"] + (counts["total"] - counts["linear"]) * 2
        frozen_per_rank = frozen  # int8 base stays replicated (ZeRO-3 cannot partition it)
    else:
        frozen = counts["total"] * BYTES[config.model.compute_dtype]
        frozen_per_rank = frozen // world if ds.deepspeed and ds.zero_stage == 3 else frozen
    sharded_optimizer = ds.deepspeed and ds.zero_stage >= 1
    optimizer_per_rank = trainable * ADAM_BYTES_PER_PARAM // (world if sharded_optimizer else 1)
    return {
        "model": {
            "source": config.model.source,
            "spec_from": origin,
            "hidden_size": d,
            "parameters": counts["total"],
        },
        "budget": {
            "method": method.method,
            "m": method.prompt_length,
            "r": getattr(method, "rank", None),
            "trainable": trainable,
            "pt_budget": budget_tokens * d,
            "fraction_of_pt_budget": round(trainable / (budget_tokens * d), 4),
        },
        "memory": {
            "world_size": world,
            "frozen_weight_bytes_per_rank": frozen_per_rank,
            "trainable_parameters": trainable,
            "optimizer_state_bytes_per_rank": optimizer_per_rank,
        },
    }
