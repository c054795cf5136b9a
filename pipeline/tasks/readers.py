"""Readers for the GLUE/SuperGLUE files as distributed (JSONL, TSV with or without header/BOM).

Errors name the file and the 1-based line number of the bad row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad or missing data; the message names the file and row."""


def read_utf8(path: Path) -> str:
    """The file's text (a UTF-8 BOM dropped); another encoding is an error naming the line."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte {data[exc.start : exc.start + 1]!r}); "
            "re-encode the file as UTF-8"
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line_no, line in enumerate(read_utf8(path).split("\n"), start=1):
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
    rows = []
    reader = csv.reader(
        io.StringIO(read_utf8(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE
    )
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


def require_text(row: dict[str, Any], fields: Sequence[str], path: Path | str) -> None:
    """The template's fields are text: a null would print as "None" in the prompt."""
    for name in fields:
        value = row[name]
        if not isinstance(value, str):
            kind = "null" if value is None else f"a {type(value).__name__}, not text"
            raise DataError(f"{path}: line {row.get('_line', '?')}: field {name!r} is {kind}")
