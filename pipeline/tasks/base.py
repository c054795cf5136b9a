"""What a task is, declared as data: files, template, choices, labels, metrics, split protocol.

A task is a YAML mapping validated by :class:`Task` (the built-in ones live in
``pipeline/tasks/builtin/*.yaml``; a run config names one, points at a file, or declares one
inline). Templates are ``str.format`` strings over the row's fields; the rare computed field
(COPA's connector) is a Jinja expression under ``derive``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .readers import DataError, read_rows, require_fields, require_text

Row = dict[str, Any]
FieldNames = str | list[str]


def first_present(row: Row, names: FieldNames) -> Any:
    """The value of the first of ``names`` the row has (KeyError naming them all if none)."""
    for name in [names] if isinstance(names, str) else names:
        if name in row:
            return row[name]
    raise KeyError(names)


def label_key(value: Any) -> str:
    """Label values compare as text: JSON ``true``, TSV ``"True"`` and YAML ``True`` agree."""
    return str(value).strip()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataFile(Strict):
    """A split's file: relative to the data directory, or absolute."""

    path: str = Field(description="JSONL/JSON, CSV, TSV or Parquet file (by suffix).")
    columns: tuple[str, ...] | None = Field(None, description="Header-less CSV/TSV columns.")
    rename: dict[str, str] = Field(default_factory=dict, description="Field renames on read.")

    def location(self, root: Path | None) -> Path:
        path = Path(self.path).expanduser()
        if path.is_absolute() or root is None:
            return path
        return root / path

    def read(self, root: Path | None) -> list[Row]:
        rows = read_rows(self.location(root), self.columns)
        if self.rename:
            rows = [{self.rename.get(k, k): v for k, v in row.items()} for row in rows]
        return rows


class Hub(Strict):
    path: str = Field(description="Hugging Face dataset id.")
    name: str | None = Field(None, description="Its configuration name.")


class Label(Strict):
    field: FieldNames = Field(description="The label's field (the first of a list present).")
    map: dict[str, int] | None = Field(
        None, description="Raw value (as text) → choice index; absent: the value is the index."
    )
    round: bool = Field(False, description="Round a numeric value to the nearest index.")

    @model_validator(mode="before")
    @classmethod
    def _text_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("map"), dict):
            data = {**data, "map": {label_key(k): v for k, v in data["map"].items()}}
        return data


class Task(Strict):
    """A task. Classification: the model scores each choice continuation after the context.
    Generation: it is trained on the target continuation and evaluated on what it generates
    greedily (exact match / token F1 against every gold answer).

    ``protocol`` is the paper's split rule: ``small`` halves the validation file into dev and
    test; ``large`` holds 1,000 training rows out as dev and tests on validation; ``explicit``
    reads ``train``, ``dev`` and ``test`` files as given.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The task's name.")
    type: Literal["classification", "generation"] = "classification"
    template: str = Field(description="str.format template over the row's fields.")
    fields: tuple[str, ...] = Field(
        (), description="Text fields every row must have (default: the template's fields)."
    )
    derive: dict[str, str] = Field(
        default_factory=dict, description="Computed fields: name → Jinja expression over the row."
    )
    allowed: dict[str, list[str]] = Field(
        default_factory=dict, description="Fields restricted to a set of values."
    )
    choices: tuple[str, ...] = Field((), description="The fixed verbaliser (one per class).")
    choice_fields: tuple[str, ...] = Field(
        (), description="Per-row choices: one field per choice (COPA)."
    )
    choice_template: str = Field(
        "{{ choice }}", description="Jinja template of a per-row choice over ``choice``."
    )
    label: Label | None = Field(None, description="Classification: the row's class.")
    target: FieldNames | None = Field(
        None,
        description="Generation: the answer's field (text, or a list: all are gold, the "
        "first is trained on).",
    )
    target_template: str = Field(
        " {target}\n", description="Generation: the trained continuation (str.format over target)."
    )
    max_new_tokens: int = Field(32, gt=0, description="Generation: tokens generated at most.")
    stop: tuple[str, ...] = Field(("\n",), description="Generation: text that ends an answer.")
    gold: FieldNames | None = Field(None, description="Numeric gold value (regression).")
    choice_values: tuple[float, ...] | None = Field(
        None, description="Each choice's number: the prediction is the expected value."
    )
    metrics: tuple[str, ...] = Field(min_length=1)
    protocol: Literal["small", "large", "explicit"]
    files: dict[str, DataFile]
    hub: Hub | None = None
    truncate_field: str | None = Field(
        None, description="The field shortened when a row is too long (never the question)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        from .metrics import METRICS
        from .text_metrics import TEXT_METRICS

        explicit = self.protocol == "explicit"
        wanted = ("train", "dev", "test") if explicit else ("train", "validation")
        missing = [split for split in wanted if split not in self.files]
        extra = [split for split in self.files if split not in wanted]
        if missing or extra:
            raise ValueError(
                f"files: protocol {self.protocol} needs exactly {list(wanted)} "
                f"(missing {missing}, unexpected {extra})"
            )
        if self.type == "generation":
            self._generation_keys()
        else:
            self._classification_keys()
        known = TEXT_METRICS if self.type == "generation" else METRICS
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise ValueError(f"metrics: unknown {unknown} for {self.type}; known: {sorted(known)}")
        if self.choice_values is not None and len(self.choice_values) != len(self.choices):
            raise ValueError("choice_values: one number per choice")
        if self.truncate_field is not None and self.truncate_field not in self.template_fields:
            raise ValueError(f"truncate_field: {self.truncate_field!r} is not in the template")
        return self

    def _classification_keys(self) -> None:
        if self.label is None:
            raise ValueError("label: required for a classification task")
        if self.target is not None:
            raise ValueError("target: only for type: generation")
        if bool(self.choices) == bool(self.choice_fields):
            raise ValueError("give either choices (fixed) or choice_fields (per row)")

    def _generation_keys(self) -> None:
        if self.target is None:
            raise ValueError("target: required for type: generation (the answer's field)")
        misplaced = [
            key
            for key, value in (
                ("label", self.label),
                ("choices", self.choices),
                ("choice_fields", self.choice_fields),
            )
            if value
        ]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: only for classification tasks")

    @cached_property
    def template_fields(self) -> tuple[str, ...]:
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        except ValueError as exc:
            raise ValueError(f"template: {exc}") from None
        return tuple(dict.fromkeys(names))

    @cached_property
    def required_fields(self) -> tuple[str, ...]:
        if self.fields:
            return self.fields
        return tuple(f for f in self.template_fields if f not in self.derive)

    @cached_property
    def _jinja(self) -> dict[str, Any]:
        from jinja2 import StrictUndefined
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
        compiled = {name: env.from_string(expr) for name, expr in self.derive.items()}
        compiled["__choice__"] = env.from_string(self.choice_template)
        return compiled

    @property
    def selection_metric(self) -> str:
        """The dev metric that picks the checkpoint (the task's first metric)."""
        return self.metrics[0]

    def answers_of(self, row: Row, source: str) -> list[str]:
        """Generation: the row's gold answers (at least one, all text)."""
        line = row.get("_line", "?")
        try:
            value = first_present(row, self.target)
        except KeyError:
            raise DataError(f"{source}: line {line}: no target field {self.target!r}") from None
        answers = [value] if isinstance(value, str) else value
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) for a in answers)
        ):
            raise DataError(
                f"{source}: line {line}: target {value!r} is not text or a non-empty list of text"
            )
        return answers

    def choices_for(self, row: Row) -> list[str]:
        if self.type == "generation":  # the one continuation trained on: the first answer
            return [self.target_template.format(target=self.answers_of(row, "row")[0])]
        if self.choices:
            return list(self.choices)
        render = self._jinja["__choice__"].render
        return [render(choice=row[name]) for name in self.choice_fields]

    def context(self, row: Row) -> str:
        return self.template.format(**row)

    def label_of(self, row: Row, source: str) -> int:
        """The row's choice index (DataError naming the file and line when unusable); a
        generative row's one continuation is index 0."""
        if self.type == "generation":
            return 0
        line = row.get("_line", "?")
        try:
            raw = first_present(row, self.label.field)
        except KeyError:
            raise DataError(f"{source}: line {line}: no label field {self.label.field!r}") from None
        if isinstance(raw, list | dict) or raw is None:
            raise DataError(f"{source}: line {line}: label {raw!r} is not a single value")
        try:
            if self.label.map is not None:
                index = self.label.map[label_key(raw)]
            else:
                index = round(float(raw)) if self.label.round else int(raw)
        except KeyError:
            raise DataError(
                f"{source}: line {line}: label {raw!r} is not one of "
                f"{sorted(self.label.map or ())} for task {self.name}"
            ) from None
        except ValueError as exc:
            raise DataError(f"{source}: line {line}: no usable label ({exc})") from None
        if not 0 <= index < len(self.choices_for(row)):
            raise DataError(
                f"{source}: line {line}: label {raw!r} is outside the "
                f"{len(self.choices_for(row))} choices of task {self.name}"
            )
        return index

    def gold_of(self, row: Row, label: int) -> float:
        return float(first_present(row, self.gold)) if self.gold else float(label)

    def normalise(self, row: Row, source: str, labelled: bool = True) -> Row:
        """Check the fields and compute the derived ones; returns the row the template sees."""
        line = row.get("_line", "?")
        required = (*self.required_fields, *self.choice_fields)
        require_fields(row, required, source)
        require_text(row, required, source)
        if labelled and self.type == "generation":
            self.answers_of(row, source)
        elif labelled and isinstance(self.label.field, str):
            require_fields(row, (self.label.field,), source)
        for name, values in self.allowed.items():
            if row[name] not in values:
                raise DataError(
                    f"{source}: line {line}: {name} {row[name]!r} is not one of {sorted(values)}"
                )
        empty = [name for name in self.choice_fields if not row[name].strip()]
        if empty:
            raise DataError(f"{source}: line {line}: empty choice(s) {empty}")
        row = dict(row)
        for name, compiled in self._jinja.items():
            if name != "__choice__":
                row[name] = compiled.render(**row)
        return row


def load_local(task: Task, root: Path | None, splits: Sequence[str]) -> dict[str, list[Row]]:
    if root is not None and not root.is_dir():
        raise DataError(f"data directory {root} does not exist (task.data_dir / PIPELINE_DATA_DIR)")
    return {split: task.files[split].read(root) for split in splits}


def load_hub(task: Task, splits: Sequence[str]) -> dict[str, list[Row]]:
    """The Hugging Face hub fallback for users without a local copy."""
    import datasets

    if task.hub is None:
        raise DataError(
            f"task {task.name}: no local data directory set (task.data_dir or PIPELINE_DATA_DIR) "
            "and the task names no hub dataset"
        )
    path, name = task.hub.path, task.hub.name
    try:
        loaded = datasets.load_dataset(path, name)
    except Exception as exc:
        raise DataError(
            f"task {task.name}: no local data directory set (task.data_dir or PIPELINE_DATA_DIR) "
            f"and loading {path}{'/' + name if name else ''} from the hub failed: {exc}"
        ) from exc
    return {split: [dict(r, _line=i + 1) for i, r in enumerate(loaded[split])] for split in splits}
