"""Cheap checks of a local model directory, run before any stage (seconds, not after training).

A directory without tokenizer files would load a tokenizer that maps every input to one token
(training "works" on garbage); a corrupt ``config.json`` or a truncated safetensors file would
fail only when a stage loads the weights. Each check reads file headers, never the weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .models import ModelLoadError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)


def check_safetensors(path: Path) -> None:
    """The header parses and the tensors it lists end exactly at the end of the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes in a {size}-byte file")
            header = json.loads(f.read(header_len))
        end = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
    if 8 + header_len + end != size:
        raise ModelLoadError(
            f"{path}: truncated or corrupt safetensors file ({size} bytes, its header describes "
            f"{8 + header_len + end})"
        )


def check_model_dir(path: Path) -> dict:
    """Check ``path`` (a local model directory); return its parsed config.json."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path / 'config.json'}: not a readable JSON config ({exc})"
        ) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'}: expected a JSON object")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer next to the weights (tokenizer.save_pretrained)"
        )
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    return config


def check_vocabulary(source: str, tokenizer_size: int, vocab_size: int) -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    if tokenizer_size > vocab_size:
        raise ModelLoadError(
            f"model.source {source}: the tokenizer has {tokenizer_size} tokens but the model's "
            f"vocabulary has {vocab_size} rows: tokenizer and weights are from different models"
        )
