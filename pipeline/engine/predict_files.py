"""`pipeline predict`'s files: rows read from JSONL, CSV, TSV or Parquet with the readers tasks
use, and results written as JSONL or CSV (by the output's suffix), each result beside the input
row's own extra columns (an id, the gold label) so it joins back without relying on row order."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..tasks import Task
from ..tasks.readers import Row, iter_rows

CSV_SUFFIX = ".csv"
ECHO_PREFIX = "input_"  # an echoed column whose name a result key already has


def read_input(path: Path, task: Task) -> list[Row]:
    """The rows of ``path`` (format by suffix; ``_line``: each row's line or record number),
    keyed as the task names its fields."""
    return [task.renamed(row, str(path)) for row in iter_rows(path)]


def echoed_columns(task: Task, row: Row) -> dict[str, Any]:
    """The row's columns the task does not read as text (ids, the gold label, notes): echoed
    beside its result. The texts the template reads are left out (they may be long)."""
    consumed = {*task.required_fields, *task.choice_fields, *task.derive, "_line"}
    return {key: value for key, value in row.items() if key not in consumed}


def joined(task: Task, rows: list[Row], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each result after its input row's echoed columns (renamed ``input_NAME`` where the result
    has a key of the same name)."""
    out = []
    for row, result in zip(rows, results, strict=True):
        echoed = {
            (ECHO_PREFIX + key if key in result else key): value
            for key, value in echoed_columns(task, row).items()
        }
        out.append({**echoed, **result})
    return out


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: a mapping value (``scores``) becomes a column per key (``scores.yes``); a
    list is written as JSON."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list):
            out[key] = json.dumps(value, ensure_ascii=False)
        else:
            out[key] = value
    return out


def render(records: list[dict[str, Any]], csv_output: bool) -> str:
    """The results as JSONL, or as CSV with a header (columns in first-seen order)."""
    if not csv_output:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    rows = [flat(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def is_csv(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() == CSV_SUFFIX
