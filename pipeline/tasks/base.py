"""What a task is, declared as data: files, template, choices, labels, metrics, split protocol.

A task is a YAML mapping validated by :class:`Task` (the built-in ones live in
``pipeline/tasks/builtin/*.yaml``; a run config names one, points at a file, or declares one
inline). Templates are ``str.format`` strings over the row's fields; the rare computed field
(COPA's connector) is a Jinja expression under ``derive``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, model_validator

from .labels import FieldNames, Label, label_key
from .readers import DataError, require_fields, require_text
from .sources import DataFile, Hub, Strict, rename_fields
from .templates import format_fields, jinja, row_error

Row = dict[str, Any]
ID_FIELDS = ("id", "idx", "guid", "qid")  # kept with predictions when a row has one


def first_present(row: Row, names: FieldNames) -> Any:
    """The value of the first of ``names`` the row has (KeyError naming them all if none)."""
    for name in [names] if isinstance(names, str) else names:
        if name in row:
            return row[name]
    raise KeyError(names)


PROTOCOL_FILES = {  # the files each split protocol reads
    "small": ("train", "validation"),
    "large": ("train", "validation"),
    "explicit": ("train", "dev", "test"),
    "split": ("data",),
}


class OneFileSplit(Strict):
    """How ``protocol: split`` cuts one file: seeded, stratified by label for classification
    (each class keeps its share in every split), the rest of the rows train."""

    dev: float = Field(0.1, gt=0, lt=1, description="Fraction of the rows held out as dev.")
    test: float = Field(0.1, gt=0, lt=1, description="Fraction of the rows held out as test.")
    seed: int = Field(42, description="Seed of the shuffle that picks them.")
    stratify: bool = Field(True, description="Per class of the label (classification only).")

    @model_validator(mode="after")
    def _room_to_train(self) -> OneFileSplit:
        if self.dev + self.test >= 1:
            raise ValueError(f"dev + test = {self.dev + self.test:g} leaves no row to train on")
        return self


class Task(Strict):
    """A task. Classification: the model scores each choice continuation after the context.
    Generation: it is trained on the target continuation and evaluated on what it generates
    greedily (exact match / token F1 against every gold answer).

    ``protocol`` is the paper's split rule: ``small`` halves the validation file into dev and
    test; ``large`` holds 1,000 training rows out as dev and tests on validation; ``explicit``
    reads ``train``, ``dev`` and ``test`` files as given; ``split`` cuts one ``data`` file into
    train, dev and test (``split``: the fractions, the seed, stratified by label).
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
    protocol: Literal["small", "large", "explicit", "split"]
    files: dict[str, DataFile]
    split: OneFileSplit | None = Field(
        None, description="protocol split: how the one data file is cut (default 80/10/10)."
    )
    hub: Hub | None = None
    truncate_field: str | None = Field(
        None, description="The field shortened when a row is too long (never the question)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        from .metrics import METRICS
        from .text_metrics import TEXT_METRICS

        wanted = PROTOCOL_FILES[self.protocol]
        missing = [split for split in wanted if split not in self.files]
        extra = [split for split in self.files if split not in wanted]
        if missing or extra:
            raise ValueError(
                f"files: protocol {self.protocol} needs exactly {list(wanted)} "
                f"(missing {missing}, unexpected {extra})"
            )
        if self.split is not None and self.protocol != "split":
            raise ValueError(f"split: only for protocol: split (this task's is {self.protocol})")
        if self.type == "generation":
            self._generation_keys()
        else:
            self._classification_keys()
        self._check_templates()
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
        key = "choices" if self.choices else "choice_fields"
        given = self.choices or self.choice_fields
        twice = sorted({c for c in given if given.count(c) > 1})
        if twice:
            raise ValueError(f"{key}: {twice} given twice: identical choices score the same")
        if len(given) < 2:
            raise ValueError(f"{key}: a classification task needs at least two, got {list(given)}")
        outside = {k: v for k, v in (self.label.map or {}).items() if not 0 <= v < len(given)}
        if self.choices and outside:
            raise ValueError(f"label.map: {outside} point outside the {len(given)} choices")
        targets = set((self.label.map or {}).values())
        if self.label.map and len(targets) < 2:
            raise ValueError(
                f"label.map: every label goes to choice {targets.pop()}: the task would have "
                "one class (a classification task needs at least two)"
            )

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

    def _check_templates(self) -> None:
        """Every template compiles when the declaration loads: a syntax error names its key."""
        _ = self.template_fields  # str.format syntax ("template: ...")
        targets = set(format_fields("target_template", self.target_template))
        if targets - {"target"}:
            raise ValueError(f"target_template: only {{target}} exists, got {sorted(targets)}")
        for key, text in self.jinja_templates.items():
            from jinja2 import TemplateSyntaxError

            try:
                jinja().parse(text)
            except TemplateSyntaxError as exc:
                raise ValueError(f"{key}: Jinja syntax error (line {exc.lineno}): {exc}") from None

    @property
    def jinja_templates(self) -> dict[str, str]:
        """Key path → Jinja source: the derived fields, and the per-row choice template."""
        templates = {f"derive.{name}": expr for name, expr in self.derive.items()}
        if self.choice_fields:
            templates["choice_template"] = self.choice_template
        return templates

    def declared_fields(self, labelled: bool = True) -> dict[str, tuple[FieldNames, ...]]:
        """Key path → the row fields it names (a list: any one of them will do)."""
        from jinja2 import meta

        derived = set(self.derive)
        declared: dict[str, tuple[FieldNames, ...]] = {
            "fields" if self.fields else "template": tuple(
                f for f in self.required_fields if f not in derived
            ),
            "choice_fields": self.choice_fields,
        }
        for name, expr in self.derive.items():
            used = meta.find_undeclared_variables(jinja().parse(expr)) - derived
            declared[f"derive.{name}"] = tuple(sorted(used))
        if labelled and self.label is not None:
            declared["label.field"] = (self.label.field,)
        if labelled and self.target is not None:
            declared["target"] = (self.target,)
        return declared

    def check_fields(self, rows: Sequence[Row], source: str, labelled: bool = True) -> None:
        """A field the declaration names that no row has is a mistake in the declaration (its
        key named), not a data error of one row."""
        present = set().union(*(row.keys() for row in rows)) - {"_line"}
        for key, names in self.declared_fields(labelled).items():
            absent = [n for n in names if not any(x in present for x in _alternatives(n))]
            if absent and rows:
                raise DataError(
                    f"task {self.name}: {key} names {absent}, a field no row of {source} has "
                    f"(its fields: {', '.join(sorted(present))})"
                )

    @cached_property
    def template_fields(self) -> tuple[str, ...]:
        return format_fields("template", self.template)

    @cached_property
    def required_fields(self) -> tuple[str, ...]:
        if self.fields:
            return self.fields
        return tuple(f for f in self.template_fields if f not in self.derive)

    @cached_property
    def _jinja(self) -> dict[str, Any]:
        compiled = {name: jinja().from_string(expr) for name, expr in self.derive.items()}
        compiled["__choice__"] = jinja().from_string(self.choice_template)
        return compiled

    def _render(self, key: str, name: str, row: Row, source: str, **values: Any) -> str:
        """A Jinja template on a row; a name it uses that the row lacks is a DataError naming
        the template's key, the file and the line."""
        from jinja2 import UndefinedError

        try:
            return self._jinja[name].render(**values)
        except UndefinedError as exc:
            raise DataError(
                f"{source}: line {row.get('_line', '?')}: {key}: {exc.message} (the row's "
                f"fields: {', '.join(sorted(k for k in row if k != '_line'))})"
            ) from None
        except Exception as exc:  # the expression itself failed on this row's values
            raise row_error(key, row, source, exc) from None

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
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise DataError(
                f"{source}: line {line}: target {value!r} is not a non-blank text or a non-empty "
                "list of non-blank texts"
            )
        return answers

    def choices_for(self, row: Row, source: str = "row") -> list[str]:
        if self.type == "generation":  # the one continuation trained on: the first answer
            return [self.target_template.format(target=self.answers_of(row, source)[0])]
        if self.choices:
            return list(self.choices)
        return [
            self._render("choice_template", "__choice__", row, source, choice=row[name])
            for name in self.choice_fields
        ]

    def context(self, row: Row, source: str = "row") -> str:
        """The row through ``template`` (a field whose value its format spec cannot take is a
        DataError naming the file and line)."""
        try:
            return self.template.format(**row)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise row_error("template", row, source, exc) from None

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
        count = len(self.choices_for(row, source))
        if not 0 <= index < count:
            raise DataError(
                f"{source}: line {line}: label {raw!r} is outside the {count} choices of task "
                f"{self.name}"
            )
        return index

    def renamed(self, row: Row, source: str = "input") -> Row:
        """A row keyed by its file's own column names, keyed as the task names them (the
        files' ``rename`` maps); both names of one field in a row: a DataError."""
        renames = {old: new for f in self.files.values() for old, new in f.rename.items()}
        return rename_fields(row, renames, source)

    def check_rows(self, rows: Sequence[Row], source: str) -> None:
        """Unlabelled rows to predict: fields present and usable (DataError: file and line)."""
        self.check_fields(rows, source, labelled=False)
        for row in rows:
            self.normalise(row, source, labelled=False)

    def label_values(self) -> list[str]:
        """Each choice's label as the data writes it (the first raw value the label map sends
        to it; the index itself without a map): what predictions report beside the choice."""
        count = len(self.choices) or len(self.choice_fields)
        written = {index: raw for raw, index in reversed((self.label.map or {}).items())}
        return [written.get(i, str(i)) for i in range(count)] if self.label else []

    def as_written(self, row: Row) -> Row:
        """The row's declared fields, id and label as its file has them: under the file's own
        column names (the ``rename`` maps undone), no derived fields."""
        names = [*ID_FIELDS, *self.required_fields, *self.choice_fields]
        if self.label is not None:
            names += _alternatives(self.label.field)
        if self.target is not None:
            names += _alternatives(self.target)
        columns = {new: old for f in self.files.values() for old, new in f.rename.items()}
        return {columns.get(n, n): row[n] for n in dict.fromkeys(names) if n in row}

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
        for name in self.derive:
            row[name] = self._render(f"derive.{name}", name, row, source, **row)
        return row


def _alternatives(names: FieldNames) -> list[str]:
    return [names] if isinstance(names, str) else list(names)
