"""Readers for task data files: JSONL, CSV/TSV (with or without header or BOM), Parquet.

Errors name the file and the 1-based line number of the bad row (Parquet: the row number).
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
    return read_delimited(path, columns, delimiter="\t")


def read_delimited(
    path: Path, columns: Sequence[str] | None = None, delimiter: str = ","
) -> list[dict[str, Any]]:
    """CSV (quoted fields) or TSV (GLUE's: no quoting) rows as dicts."""
    rows = []
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    text = io.StringIO(read_utf8(path), newline="")
    reader = csv.reader(text, delimiter=delimiter, quoting=quoting)
    header = list(columns) if columns else next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file")
    first_line = 1 if columns else 2
    for line_no, values in enumerate(reader, start=first_line):
        if not values:
            continue
        if len(values) != len(header):
            raise DataError(
                f"{path}: line {line_no}: expected {len(header)} "
                f"{'tab' if delimiter == chr(9) else 'comma'}-separated fields, got {len(values)}"
            )
        row: dict[str, Any] = dict(zip(header, values, strict=True))
        row["_line"] = line_no
        rows.append(row)
    return rows


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """Parquet rows as dicts (``_line``: the 1-based row number), read by ``datasets``."""
    import datasets

    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    return [dict(row, _line=i) for i, row in enumerate(table, start=1)]


READERS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv", ".parquet": "parquet"}


def read_rows(path: Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a data file, the format chosen by its suffix."""
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown data file type {path.suffix!r}; use {sorted(READERS)}")
    if kind == "jsonl":
        return read_jsonl(path)
    if kind == "parquet":
        return read_parquet(path)
    return read_delimited(path, columns, "\t" if kind == "tsv" else ",")


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
