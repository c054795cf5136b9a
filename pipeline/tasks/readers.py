"""Readers for task data files: JSONL, CSV/TSV (with or without header or BOM), Parquet.

Every reader streams: rows come one at a time (``iter_rows``), so memory does not grow with the
file. Errors name the file and the 1-based line number of the bad
row (CSV/TSV: the record number; Parquet: the row number).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..util.files import not_a_file

Row = dict[str, Any]
PARQUET_BATCH_ROWS = 8192
CSV_FIELD_LIMIT = 2**31 - 1  # the largest the csv module takes on every platform (a C long)
# JSONL: a line holding only these is blank (skipped, not counted); bytes.strip()'s set, so the
# row count (over bytes) and the reader (over text) agree
BLANK = " \t\n\r\x0b\x0c"


class DataError(ValueError):
    """Bad or missing data; the message names the file and row."""


def _require_file(path: Path) -> None:
    if problem := not_a_file(path, "data file"):
        raise DataError(problem)


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every line, ``\\n`` kept, a UTF-8 BOM dropped; another
    encoding is an error naming the line."""
    _require_file(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: line {line_no}: not UTF-8 text (byte "
                    f"{raw[exc.start : exc.start + 1]!r}); re-encode the file as UTF-8"
                ) from None


def iter_jsonl(path: Path, wanted: Sequence[bool] | None = None) -> Iterator[Row]:
    """JSON objects, one per non-blank line. ``wanted`` (one flag per row): rows not wanted are
    skipped unparsed (they still count)."""
    index = 0
    for line_no, line in iter_lines(path):
        if not line.strip(BLANK):
            continue
        if not line.strip():  # only other invisible characters: counted as a row, not JSON
            codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in line.strip(BLANK)}))
            raise DataError(
                f"{path}: line {line_no}: holds only invisible characters ({codes}), not a JSON "
                "object; delete the line"
            )
        index += 1
        if wanted is not None and not wanted[index - 1]:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_no}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object")
        row["_line"] = line_no
        yield row


def _csv_records(path: Path, delimiter: str) -> Iterator[list[str]]:
    """CSV records (quoted fields may span lines) or TSV ones (GLUE's: no quoting). A field may
    be as long as a JSONL one: the csv module's default cap (128 KiB) is lifted."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    lines = (text for _, text in iter_lines(path))
    return csv.reader(lines, delimiter=delimiter, quoting=quoting)


def iter_delimited(
    path: Path, columns: Sequence[str] | None = None, delimiter: str = ","
) -> Iterator[Row]:
    """CSV (quoted fields) or TSV (GLUE's: no quoting) rows as dicts; ``columns`` for
    header-less files (CoLA)."""
    reader = _csv_records(path, delimiter)
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
        row: Row = dict(zip(header, values, strict=True))
        row["_line"] = line_no
        yield row


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    _require_file(path)
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def iter_parquet(path: Path) -> Iterator[Row]:
    """Parquet rows as dicts (``_line``: the 1-based row number), one row group batch at a
    time."""
    number = 0
    try:
        for batch in _parquet_file(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                row["_line"] = number
                yield row
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


READERS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv", ".parquet": "parquet"}


def _kind(path: Path) -> str:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown data file type {path.suffix!r}; use {sorted(READERS)}")
    return kind


def iter_rows(
    path: Path, columns: Sequence[str] | None = None, wanted: Sequence[bool] | None = None
) -> Iterator[Row]:
    """Rows of a data file, the format chosen by its suffix, one at a time. ``wanted``: a flag
    per row; only flagged rows are yielded (JSONL skips parsing the others)."""
    kind = _kind(path)
    if kind == "jsonl":
        rows = iter_jsonl(path, wanted)
        wanted = None
    elif kind == "parquet":
        rows = iter_parquet(path)
    else:
        rows = iter_delimited(path, columns, "\t" if kind == "tsv" else ",")
    if wanted is None:
        yield from rows
        return
    for index, row in enumerate(rows):
        if wanted[index]:
            yield row


def count_rows(path: Path, columns: Sequence[str] | None = None) -> int:
    """How many rows ``iter_rows`` yields: JSONL counts non-blank lines unparsed, Parquet reads
    its footer, CSV/TSV parses its records (quoted fields may hold newlines; a record with the
    wrong number of fields is reported here, naming its line)."""
    kind = _kind(path)
    if kind == "jsonl":
        _require_file(path)
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip(BLANK.encode()))
    if kind == "parquet":
        return _parquet_file(path).metadata.num_rows
    return sum(1 for _ in iter_delimited(path, columns, "\t" if kind == "tsv" else ","))


def read_jsonl(path: Path) -> list[Row]:
    return list(iter_jsonl(path))


def read_tsv(path: Path, columns: Sequence[str] | None = None) -> list[Row]:
    """TSV rows as dicts. ``columns`` for header-less files (CoLA); a UTF-8 BOM is ignored."""
    return list(iter_delimited(path, columns, delimiter="\t"))


def require_fields(row: Row, fields: Sequence[str], path: Path | str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise DataError(f"{path}: line {row.get('_line', '?')}: missing field(s) {missing}")


def require_text(row: Row, fields: Sequence[str], path: Path | str) -> None:
    """The template's fields are text: a null would print as "None" in the prompt."""
    for name in fields:
        value = row[name]
        if not isinstance(value, str):
            kind = (
                "null"
                if value is None
                else "null or missing (NaN: how pandas holds both)"
                if isinstance(value, float) and math.isnan(value)
                else f"a {type(value).__name__}, not text"
            )
            raise DataError(f"{path}: line {row.get('_line', '?')}: field {name!r} is {kind}")
