"""Encoded splits on disk: Arrow record batches written as they come, in any row order, into
the directory layout ``datasets.save_to_disk`` writes (``datasets.load_from_disk`` reads it,
memory-mapped), with memory bounded by one bucket of rows, never by the split."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter

IDS = pa.list_(pa.int64())
COLUMN_TYPES = {
    "context_ids": IDS,
    "choice_ids": pa.list_(IDS),
    "label": pa.int64(),
    "gold": pa.float64(),
    "truncated": pa.bool_(),
    "answers": pa.list_(pa.string()),  # generation tasks only
    "line": pa.int64(),  # dev and test: the row's line in its file
    "source": pa.string(),  # dev and test: the row's fields as written (JSON)
}
ROWS_PER_FILE = 1_000_000  # rows per data-NNNNN-of-NNNNN.arrow file
BUCKET_BYTES = 64 * 2**20  # about this much Arrow data is held to put one bucket in order
POSITION = "_position"


def record_batch(columns: dict[str, list]) -> pa.RecordBatch:
    """Encoded columns as Arrow arrays of known types (a column missing from ``COLUMN_TYPES``
    is inferred)."""
    arrays = {name: pa.array(values, COLUMN_TYPES.get(name)) for name, values in columns.items()}
    return pa.RecordBatch.from_pydict(arrays)


def bucket_rows(max_length: int) -> int:
    """Rows per ordering bucket: about ``BUCKET_BYTES`` of rows at most ``max_length`` ids."""
    return max(1_000, BUCKET_BYTES // (8 * max_length + 64))


@dataclass
class SplitStats:
    """What stats.json says about a split, summed batch by batch."""

    rows: int = 0
    truncated: int = 0
    max_context_tokens: int = 0
    context_tokens: int = 0

    def add(self, batch: pa.RecordBatch) -> None:
        lengths = pc.list_value_length(batch.column("context_ids"))
        self.rows += batch.num_rows
        self.truncated += pc.sum(batch.column("truncated")).as_py() or 0
        self.max_context_tokens = max(self.max_context_tokens, pc.max(lengths).as_py() or 0)
        self.context_tokens += pc.sum(lengths).as_py() or 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "truncated": self.truncated,
            "max_context_tokens": self.max_context_tokens,
            "mean_context_tokens": round(self.context_tokens / self.rows, 1),
        }


@dataclass
class SplitWriter:
    """One split's rows, given as (positions, batch) in any order, written in position order.

    In file order (``ordered``) batches go straight to the output files. Otherwise each row
    first goes to the bucket file of its position range; ``close`` then reads the buckets one by
    one, sorts each and appends it to the output: two passes over the disk, one bucket in RAM.
    """

    directory: Path
    size: int
    ordered: bool
    bucket_rows: int
    fingerprint: str
    stats: SplitStats = field(default_factory=SplitStats)
    _written: int = 0
    _writer: ArrowWriter | None = None
    _files: list[str] = field(default_factory=list)
    _features: datasets.Features | None = None
    _buckets: dict[int, pa.ipc.RecordBatchStreamWriter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True)

    @property
    def _bucket_dir(self) -> Path:
        return self.directory / "_buckets"

    def add(self, positions: np.ndarray, batch: pa.RecordBatch) -> None:
        self.stats.add(batch)
        if self.ordered:
            if positions[0] != self._written or positions[-1] != self._written + len(batch) - 1:
                raise RuntimeError(f"{self.directory}: rows out of order at {positions[0]}")
            self._append(batch)
            return
        bucket = positions // self.bucket_rows
        by_bucket = np.argsort(bucket, kind="stable")
        batch = batch.append_column(POSITION, pa.array(positions, pa.int64())).take(by_bucket)
        buckets, starts = np.unique(bucket[by_bucket], return_index=True)
        for b, start, end in zip(buckets.tolist(), starts, [*starts[1:], len(bucket)], strict=True):
            part = batch.slice(start, end - start)
            if b not in self._buckets:
                self._bucket_dir.mkdir(exist_ok=True)
                path = self._bucket_dir / f"{b:06d}.arrow"
                self._buckets[b] = pa.ipc.new_stream(str(path), part.schema)
            self._buckets[b].write_batch(part)

    def close(self) -> SplitStats:
        """Write the buckets in order (if any), then the ``datasets`` metadata."""
        for b in sorted(self._buckets):
            self._buckets[b].close()
            with pa.memory_map(str(self._bucket_dir / f"{b:06d}.arrow")) as source:
                table = pa.ipc.open_stream(source).read_all()
            table = table.take(pc.sort_indices(table, [(POSITION, "ascending")]))
            for batch in table.drop_columns([POSITION]).to_batches():
                self._append(batch)
            del table
        shutil.rmtree(self._bucket_dir, ignore_errors=True)
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
        if self._written != self.size:
            raise RuntimeError(f"{self.directory}: {self._written} rows written of {self.size}")
        self._write_metadata()
        return self.stats

    def _append(self, batch: pa.RecordBatch) -> None:
        """Rows in order; a new output file every ``ROWS_PER_FILE`` rows."""
        while batch.num_rows:
            if self._writer is None or self._written % ROWS_PER_FILE == 0:
                self._open_next_file(batch.schema)
            room = ROWS_PER_FILE - self._written % ROWS_PER_FILE
            part, batch = batch.slice(0, room), batch.slice(room)
            self._writer.write_table(pa.Table.from_batches([part]))
            self._written += part.num_rows

    def _open_next_file(self, schema: pa.Schema) -> None:
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
        self._features = self._features or datasets.Features.from_arrow_schema(schema)
        total = math.ceil(self.size / ROWS_PER_FILE)
        name = f"data-{len(self._files):05d}-of-{total:05d}.arrow"
        self._files.append(name)
        self._writer = ArrowWriter(features=self._features, path=str(self.directory / name))

    def _write_metadata(self) -> None:
        """``state.json`` and ``dataset_info.json`` as ``Dataset.save_to_disk`` writes them."""
        state = {
            "_data_files": [{"filename": name} for name in self._files],
            "_fingerprint": self.fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        info = asdict(datasets.DatasetInfo(features=self._features))
        (self.directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        (self.directory / "dataset_info.json").write_text(
            json.dumps({key: info[key] for key in sorted(info)}, indent=2)
        )
