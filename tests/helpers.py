"""Small helpers shared by test modules."""

from __future__ import annotations

import torch


def random_batch(batch: int = 3, length: int = 12, vocab: int = 1000, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, length), generator=g)
    return input_ids, torch.ones_like(input_ids)


def perturb(module: torch.nn.Module, seed: int = 3, scale: float = 0.05) -> None:
    """Give every trainable tensor non-trivial values (the offset is zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def write_boolq_rows(path, data_dir, n: int):
    """The first n BoolQ test rows (protocol split) as unlabeled JSONL; returns the path."""
    import json

    from pipeline.tasks import get_task, load_task_splits

    rows = load_task_splits(get_task("boolq"), data_dir, {"test": n})["test"][0]
    path.write_text(
        "".join(
            json.dumps({"passage": r["passage"], "question": r["question"]}) + "\n" for r in rows
        )
    )
    return path
