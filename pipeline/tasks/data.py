"""Splits (the DePT/ADePT protocol) and tokenisation into context + choice token ids."""

from __future__ import annotations

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
            self._choice_cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._choice_cache[text]

    def _fit(
        self, rows: list[Row], contexts: list[list[int]], budgets: list[int], source: str
    ) -> list[list[int]]:
        """Shorten the truncate field of every over-long row; each round tokenizes all rows
        still too long in one batched call (a row-by-row loop would dominate the stage)."""
        contexts = list(contexts)
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
        texts = {i: str(rows[i][field]) for i in pending}
        for _ in range(4):
            enc = self.tokenizer(
                [texts[i] for i in pending], add_special_tokens=False, return_offsets_mapping=True
            )
            for i, ids, offsets in zip(
                pending, enc["input_ids"], enc["offset_mapping"], strict=True
            ):
                keep = len(ids) - (len(contexts[i]) - budgets[i]) - 1
                if keep <= 0:
                    empty = self.tokenizer(self.task.context({**rows[i], field: ""}))["input_ids"]
                    raise DataError(
                        f"task.max_length={self.max_length} is shorter than the template of task "
                        f"{self.task.name}: it needs {len(empty) + self.max_length - budgets[i]} "
                        f"tokens before any {field} text ({source}: line "
                        f"{rows[i].get('_line', '?')})"
                    )
                texts[i] = texts[i][: offsets[keep - 1][1]]
            shortened = [self.task.context({**rows[i], field: texts[i]}) for i in pending]
            for i, ids in zip(pending, self.tokenizer(shortened)["input_ids"], strict=True):
                contexts[i] = ids
            pending = [i for i in pending if len(contexts[i]) > budgets[i]]
            if not pending:
                return contexts
        line = rows[pending[0]].get("_line", "?")
        raise DataError(f"{source}: line {line}: could not truncate {field} to fit")

    def encode(self, rows: list[Row], source: str, labelled: bool = True) -> dict[str, list]:
        """Token ids per row; ``labelled=False`` (prediction) gives label -1 and gold NaN."""
        rows = [self.task.normalise(r, source, labelled) for r in rows]
        contexts = self.tokenizer([self.task.context(r) for r in rows])["input_ids"]
        out: dict[str, list] = {
            k: [] for k in ("context_ids", "choice_ids", "label", "gold", "truncated")
        }
        choices = [[self.choice_ids(c) for c in self.task.choices_for(r)] for r in rows]
        budgets = [self.max_length - max(len(c) for c in row_choices) for row_choices in choices]
        fitted_contexts = self._fit(rows, contexts, budgets, source)
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
