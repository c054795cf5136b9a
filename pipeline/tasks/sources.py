"""Where a task's rows come from: its files (relative to the data directory, or absolute) or,
without a data directory, the Hugging Face hub."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .readers import DataError, Row, count_rows, iter_rows


class Strict(BaseModel):
    """Task declarations: unknown keys are errors; validators built when a declaration is first
    read (a config naming a built-in task reads only that task)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


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
        """All its rows (a small file; a large one streams through ``LocalRows``)."""
        path = self.location(root)
        return list(self.renamed(iter_rows(path, self.columns), str(path)))

    def renamed(self, rows: Iterator[Row], source: str) -> Iterator[Row]:
        if not self.rename:
            return rows
        return (rename_fields(row, self.rename, source) for row in rows)


def rename_fields(row: Row, renames: dict[str, str], source: str) -> Row:
    """``row`` with its columns renamed (``renames``: the file's name → the task's); a row
    holding both names of one field is ambiguous: a DataError naming both and the line."""
    for old, new in renames.items():
        if old in row and new in row and old != new:
            raise DataError(
                f"{source}: line {row.get('_line', '?')}: both {old!r} (the file's column) and "
                f"{new!r} (the task's name for it) are given: keep one"
            )
    return {renames.get(k, k): v for k, v in row.items()}


class Hub(Strict):
    path: str = Field(description="Hugging Face dataset id.")
    name: str | None = Field(None, description="Its configuration name.")


HUB_BATCH_ROWS = 4096


class RowSource(Protocol):
    """One of a task's files, read row by row: where it is, how many rows, the rows."""

    description: str

    def count(self) -> int: ...

    def rows(self, wanted: Sequence[bool] | None = None) -> Iterator[Row]:
        """Its rows in order (``_line``: where each is); ``wanted``: a flag per row, only the
        flagged ones."""
        ...


@dataclass
class LocalRows:
    file: DataFile
    root: Path | None

    @property
    def description(self) -> str:
        return str(self.file.location(self.root))

    def count(self) -> int:
        return count_rows(self.file.location(self.root), self.file.columns)

    def rows(self, wanted: Sequence[bool] | None = None) -> Iterator[Row]:
        path = self.file.location(self.root)
        return self.file.renamed(iter_rows(path, self.file.columns, wanted), str(path))


@dataclass
class HubRows:
    """A split the ``datasets`` library downloaded (memory-mapped Arrow), read in batches."""

    dataset: Any
    description: str

    def count(self) -> int:
        return len(self.dataset)

    def rows(self, wanted: Sequence[bool] | None = None) -> Iterator[Row]:
        for start in range(0, len(self.dataset), HUB_BATCH_ROWS):
            batch = self.dataset[start : start + HUB_BATCH_ROWS]
            names = list(batch)
            for offset, values in enumerate(zip(*batch.values(), strict=True)):
                index = start + offset
                if wanted is None or wanted[index]:
                    yield dict(zip(names, values, strict=True), _line=index + 1)


def local_sources(task: Any, root: Path | None, splits: Sequence[str]) -> dict[str, RowSource]:
    if root is not None and not root.is_dir():
        raise DataError(f"data directory {root} does not exist (task.data_dir / PIPELINE_DATA_DIR)")
    return {split: LocalRows(task.files[split], root) for split in splits}


def hub_sources(task: Any, splits: Sequence[str]) -> dict[str, RowSource]:
    """The Hugging Face hub fallback for users without a local copy: downloaded once into the
    ``datasets`` cache, then read from there in batches like a local file."""
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
    return {split: HubRows(loaded[split], f"hub:{path}") for split in splits}
