"""What a task is: files, template, verbaliser, label mapping, metrics and split protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .readers import DataError, read_jsonl, read_tsv, require_fields, require_text

Row = dict[str, Any]


@dataclass(frozen=True)
class DataFile:
    """A split's file under the data root; ``columns`` for header-less TSV; ``rename`` fields."""

    path: str
    columns: tuple[str, ...] | None = None
    rename: Mapping[str, str] = field(default_factory=dict)

    def read(self, root: Path) -> list[Row]:
        full = root / self.path
        rows = read_jsonl(full) if full.suffix == ".jsonl" else read_tsv(full, self.columns)
        if self.rename:
            rows = [{self.rename.get(k, k): v for k, v in row.items()} for row in rows]
        return rows


@dataclass(frozen=True)
class Task:
    """A rank-classification task: the model scores each choice continuation after the context.

    ``template`` is a ``str.format`` string over the row's fields. ``choices`` is the fixed
    verbaliser, or ``row_choices`` gives per-row choices (COPA). ``label_map`` maps the raw value
    of ``label_field`` to a choice index; ``choice_values`` turns the choice distribution into a
    number for regression tasks (STS-B: expected score).
    """

    name: str
    template: str
    fields: tuple[str, ...]
    label_field: str | None
    metrics: tuple[str, ...]
    protocol: Literal["small", "large"]
    files: Mapping[str, DataFile]
    hub: tuple[str, str | None]
    choices: tuple[str, ...] = ()
    label_map: Mapping[Any, int] | None = None
    truncate_field: str | None = None
    row_choices: Callable[[Row], list[str]] | None = None
    prepare: Callable[[Row], Row] | None = None
    choice_values: tuple[float, ...] | None = None
    gold_value: Callable[[Row], float] | None = None
    label_fn: Callable[[Row], Any] | None = None

    @property
    def selection_metric(self) -> str:
        """The dev metric that picks the checkpoint (the task's first metric)."""
        return self.metrics[0]

    def choices_for(self, row: Row) -> list[str]:
        return self.row_choices(row) if self.row_choices else list(self.choices)

    def context(self, row: Row) -> str:
        return self.template.format(**row)

    def label(self, row: Row, source: str) -> int:
        try:
            raw = self.label_fn(row) if self.label_fn else row[self.label_field]
        except (KeyError, TypeError, ValueError) as exc:
            line = row.get("_line", "?")
            raise DataError(f"{source}: line {line}: no usable label ({exc!r})") from None
        if isinstance(raw, list | dict) or raw is None:
            raise DataError(
                f"{source}: line {row.get('_line', '?')}: label {raw!r} is not a single value"
            )
        if self.label_map is None:
            index = int(raw)
        else:
            key = raw.strip() if isinstance(raw, str) else raw
            if key not in self.label_map:
                raise DataError(
                    f"{source}: line {row.get('_line', '?')}: label {raw!r} is not one of "
                    f"{sorted(map(str, self.label_map))} for task {self.name}"
                )
            index = self.label_map[key]
        if not 0 <= index < len(self.choices_for(row)):
            raise DataError(
                f"{source}: line {row.get('_line', '?')}: label {raw!r} is outside the "
                f"{len(self.choices_for(row))} choices of task {self.name}"
            )
        return index

    def gold(self, row: Row, label: int) -> float:
        return float(self.gold_value(row)) if self.gold_value else float(label)

    def normalise(self, row: Row, source: str, labelled: bool = True) -> Row:
        """Check fields, apply ``prepare``; returns the row the template sees."""
        with_label = labelled and self.label_field
        required = (*self.fields, self.label_field) if with_label else self.fields
        require_fields(row, required, source)
        require_text(row, self.fields, source)
        try:
            return self.prepare(dict(row)) if self.prepare else dict(row)
        except ValueError as exc:  # the task's own row check (e.g. COPA's question)
            raise DataError(f"{source}: line {row.get('_line', '?')}: {exc}") from None


def load_local(task: Task, root: Path, splits: Sequence[str] = ("train", "validation")):
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist (task.data_dir / PIPELINE_DATA_DIR)")
    return {split: task.files[split].read(root) for split in splits}


def load_hub(task: Task, splits: Sequence[str] = ("train", "validation")):
    """The Hugging Face hub fallback for users without a local copy."""
    import datasets

    path, name = task.hub
    try:
        loaded = datasets.load_dataset(path, name)
    except Exception as exc:
        raise DataError(
            f"task {task.name}: no local data directory set (task.data_dir or PIPELINE_DATA_DIR) "
            f"and loading {path}{'/' + name if name else ''} from the hub failed: {exc}"
        ) from exc
    return {split: [dict(r, _line=i + 1) for i, r in enumerate(loaded[split])] for split in splits}
