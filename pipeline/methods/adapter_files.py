"""An adapter directory on disk: written in format 3 (PEFT's own files for PT and LoRA, the
pipeline's record beside them: :mod:`.peft_format`), read in formats 1-3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..util.files import CorruptFileError, atomic_directory, load_json
from .peft_format import from_peft, to_peft

ADAPTER_CONFIG_NAME = "adapter_config.json"  # PEFT's config (format 3), the record (1, 2)
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PIPELINE_RECORD_NAME = "pipeline_adapter.json"  # format 3: the pipeline's record, every method
ADAPTER_FORMAT_VERSION = 3  # 3: PEFT's names and config for PT and LoRA; the record beside them
READABLE_FORMAT_VERSIONS = (1, 2, 3)


def write_adapter(
    directory: Path,
    meta: dict[str, Any],
    state: dict[str, torch.Tensor],
    peft: dict[str, Any] | None,
) -> Path:
    """The adapter's tensors (PEFT's names where ``peft`` is its config), PEFT's
    ``adapter_config.json`` when there is one, and the pipeline's record; all or nothing."""
    method = meta["method_config"]["method"]
    with atomic_directory(directory) as tmp:
        tensors = {k: v.contiguous().cpu() for k, v in to_peft(method, state).items()}
        save_file(tensors, tmp / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        record = {"format_version": ADAPTER_FORMAT_VERSION, **meta}
        (tmp / PIPELINE_RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True))
        if peft is not None:
            (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(peft, indent=2, default=_listed))
    return directory


def _listed(value: Any) -> Any:
    """JSON for what PEFT's config holds as a set (``target_modules``)."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_adapter_meta(directory: Path) -> dict[str, Any]:
    """The pipeline's record of an adapter in any readable format; a directory PEFT wrote
    itself (no record) or a format this code does not read is an error saying what to do."""
    record = directory / PIPELINE_RECORD_NAME
    path = record if record.is_file() else directory / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no adapter record (expected {PIPELINE_RECORD_NAME}, or "
            f"{ADAPTER_CONFIG_NAME} of an adapter written before format 3)"
        )
    meta = load_json(path)
    version = meta.get("format_version")
    if version is None and "peft_type" in meta:
        raise ValueError(
            f"{path}: a PEFT adapter without the pipeline's {PIPELINE_RECORD_NAME}: load it with "
            "peft.PeftModel.from_pretrained(base, directory)"
        )
    if version not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"{path}: adapter format_version {version!r}; this pipeline reads "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))} (re-export it with this version)"
        )
    if version == 1 and meta["method_config"].get("method") == "lora":
        for key in ("num_virtual_tokens", "prompt_init", "prompt_init_text"):
            meta["method_config"].pop(key, None)  # v1 LoRA configs carried unused prompt keys
    return meta


def read_adapter_weights(directory: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the wrapper's parameter names, whatever the format."""
    weights_file = directory / ADAPTER_WEIGHTS_NAME
    try:
        weights = load_file(weights_file)
    except (OSError, SafetensorError) as exc:
        raise CorruptFileError(f"{weights_file}: unreadable adapter weights ({exc})") from None
    if meta["format_version"] >= 3:
        return from_peft(meta["method_config"]["method"], weights)
    return weights
