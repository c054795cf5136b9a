"""Readers for the GLUE/SuperGLUE files as distributed (JSONL, TSV with or without header/BOM).

Errors name the file and the 1-based line number of the bad row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad or missing data; the message names the file and row."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_no}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {line_no}: expected a JSON object")
            row["_line"] = line_no
            rows.append(row)
    return rows


def read_tsv(path: Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """TSV rows as dicts. ``columns`` for header-less files (CoLA); a UTF-8 BOM is ignored."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(columns) if columns else next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file")
        first_line = 1 if columns else 2
        for line_no, values in enumerate(reader, start=first_line):
            if not values:
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}: line {line_no}: expected {len(header)} tab-separated fields, "
                    f"got {len(values)}"
                )
            row: dict[str, Any] = dict(zip(header, values, strict=True))
            row["_line"] = line_no
            rows.append(row)
    return rows


def require_fields(row: dict[str, Any], fields: Sequence[str], path: Path | str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise DataError(f"{path}: line {row.get('_line', '?')}: missing field(s) {missing}")
