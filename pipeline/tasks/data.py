"""Splits (the DePT/ADePT protocol) and tokenisation into context + choice token ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Row, Task, load_hub, load_local
from .readers import DataError

SPLIT_SEED = 42
LARGE_DEV_SIZE = 1000


def protocol_splits(task: Task, train: list[Row], validation: list[Row], seed: int = SPLIT_SEED):
    """Small tasks: validation shuffled (seed 42) and halved → dev, test. Large tasks: 1,000
    shuffled training rows are held out as dev; the official validation set is the test set."""
    rng = np.random.default_rng(seed)
    if task.protocol == "small":
        order = rng.permutation(len(validation))
        half = len(validation) // 2
        return {
            "train": train,
            "dev": [validation[i] for i in order[:half]],
            "test": [validation[i] for i in order[half:]],
        }
    order = rng.permutation(len(train))
    return {
        "train": [train[i] for i in order[LARGE_DEV_SIZE:]],
        "dev": [train[i] for i in order[:LARGE_DEV_SIZE]],
        "test": validation,
    }


def load_task_splits(
    task: Task, data_dir: Path | None, limits: dict[str, int | None]
) -> dict[str, tuple[list[Row], str]]:
    """{split: (rows, source description)} after the protocol split and the row limits."""
    raw = load_local(task, data_dir) if data_dir else load_hub(task)
    sources = {
        split: str(data_dir / task.files[split].path) if data_dir else f"hub:{task.hub[0]}"
        for split in ("train", "validation")
    }
    splits = protocol_splits(task, raw["train"], raw["validation"])
    out = {}
    for split, rows in splits.items():
        limit = limits.get(split)
        rows = rows[:limit] if limit else rows
        source = sources[
            "train"
            if split == "train" or (task.protocol == "large" and split == "dev")
            else "validation"
        ]
        if not rows:
            raise DataError(f"task {task.name}: split {split} is empty ({source})")
        out[split] = (rows, source)
    return out


def rust_backend(tokenizer: Any) -> Any:
    """The fast tokenizer's Rust backend when calling it directly gives exactly what
    ``tokenizer(texts)`` gives (no truncation or padding configured on it); else None.

    The transformers wrapper converts every encoding to Python dicts row by row, which costs
    about as much as the tokenization itself on short rows (SST-2).
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    return backend


def token_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Batched token ids of ``texts``, as ``tokenizer(texts)["input_ids"]``."""
    backend = rust_backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]


@dataclass
class Encoded:
    """One text's token ids and their character offsets (what a Rust ``Encoding`` holds)."""

    ids: list[int]
    offsets: list[tuple[int, int]]


def encode_batch(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Batched encodings (``.ids``, ``.offsets``), special tokens included, as
    ``tokenizer(texts, return_offsets_mapping=True)`` gives them; from the Rust backend the
    offsets are converted to Python only for the rows that ask for them."""
    backend = rust_backend(tokenizer)
    if backend is None:
        enc = tokenizer(texts, return_offsets_mapping=True)
        pairs = zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        return [Encoded(ids, offsets) for ids, offsets in pairs]
    return backend.encode_batch(texts)


class Encoder:
    """Turns rows into ``context_ids`` + per-choice ``choice_ids`` within ``max_length`` tokens.

    Over-long rows lose tokens from the task's ``truncate_field`` (the passage), never from the
    question or the answer.
    """

    def __init__(self, task: Task, tokenizer: Any, max_length: int) -> None:
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self._choice_cache: dict[str, list[int]] = {}

    def choice_ids(self, text: str) -> list[int]:
        if text not in self._choice_cache:
            self._choice_cache[text] = token_ids(self.tokenizer, [text], False)[0]
        return self._choice_cache[text]

    def _fit(
        self, rows: list[Row], encoded: list[Any], budgets: list[int], source: str
    ) -> list[list[int]]:
        """Shorten the truncate field of every over-long row. The cut comes from the context's
        own offsets (the field's tokens inside it), so each round re-tokenizes only the
        shortened contexts, all rows still too long in one batched call."""
        contexts = [e.ids for e in encoded]
        pending = [i for i, ids in enumerate(contexts) if len(ids) > budgets[i]]
        if not pending:
            return contexts
        field = self.task.truncate_field
        if field is None:
            i = pending[0]
            raise DataError(
                f"{source}: line {rows[i].get('_line', '?')}: {len(contexts[i])} context tokens "
                f"exceed task.max_length={self.max_length} and task {self.task.name} has no "
                "field that may be shortened"
            )
        head = self.task.template.split("{" + field + "}")[0]  # the template before the field
        texts = {i: str(rows[i][field]) for i in pending}
        current = {i: encoded[i] for i in pending}
        for _ in range(4):
            for i in pending:
                ids, offsets = current[i].ids, current[i].offsets
                start = len(head.format(**{**rows[i], field: texts[i]}))
                end = start + len(texts[i])
                inside = [j for j, (a, b) in enumerate(offsets) if b > start and a < end]
                keep = len(inside) - (len(ids) - budgets[i]) - 1
                if keep <= 0:
                    self._too_short(rows[i], field, budgets[i], source)
                texts[i] = texts[i][: offsets[inside[keep - 1]][1] - start]
            shortened = [self.task.context({**rows[i], field: texts[i]}) for i in pending]
            for i, again in zip(pending, encode_batch(self.tokenizer, shortened), strict=True):
                current[i], contexts[i] = again, again.ids
            pending = [i for i in pending if len(contexts[i]) > budgets[i]]
            if not pending:
                return contexts
        line = rows[pending[0]].get("_line", "?")
        raise DataError(f"{source}: line {line}: could not truncate {field} to fit")

    def _too_short(self, row: Row, field: str, budget: int, source: str) -> None:
        empty = token_ids(self.tokenizer, [self.task.context({**row, field: ""})])[0]
        raise DataError(
            f"task.max_length={self.max_length} is shorter than the template of task "
            f"{self.task.name}: it needs {len(empty) + self.max_length - budget} tokens before "
            f"any {field} text ({source}: line {row.get('_line', '?')})"
        )

    def encode(self, rows: list[Row], source: str, labelled: bool = True) -> dict[str, list]:
        """Token ids per row; ``labelled=False`` (prediction) gives label -1 and gold NaN."""
        rows = [self.task.normalise(r, source, labelled) for r in rows]
        encoded = encode_batch(self.tokenizer, [self.task.context(r) for r in rows])
        contexts = [e.ids for e in encoded]
        out: dict[str, list] = {
            k: [] for k in ("context_ids", "choice_ids", "label", "gold", "truncated")
        }
        choices = [[self.choice_ids(c) for c in self.task.choices_for(r)] for r in rows]
        budgets = [self.max_length - max(len(c) for c in row_choices) for row_choices in choices]
        fitted_contexts = self._fit(rows, encoded, budgets, source)
        for row, context_ids, fitted, row_choices in zip(
            rows, contexts, fitted_contexts, choices, strict=True
        ):
            label = self.task.label(row, source) if labelled else -1
            out["context_ids"].append(fitted)
            out["choice_ids"].append(row_choices)
            out["label"].append(label)
            out["gold"].append(self.task.gold(row, label) if labelled else float("nan"))
            out["truncated"].append(len(fitted) < len(context_ids))
        return out
