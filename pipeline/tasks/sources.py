"""Where a task's rows come from: its files (relative to the data directory, or absolute) or,
without a data directory, the Hugging Face hub."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .readers import DataError, read_rows

Row = dict[str, Any]


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
        rows = read_rows(self.location(root), self.columns)
        if self.rename:
            rows = [{self.rename.get(k, k): v for k, v in row.items()} for row in rows]
        return rows


class Hub(Strict):
    path: str = Field(description="Hugging Face dataset id.")
    name: str | None = Field(None, description="Its configuration name.")


def load_local(task: Any, root: Path | None, splits: Sequence[str]) -> dict[str, list[Row]]:
    if root is not None and not root.is_dir():
        raise DataError(f"data directory {root} does not exist (task.data_dir / PIPELINE_DATA_DIR)")
    return {split: task.files[split].read(root) for split in splits}


def load_hub(task: Any, splits: Sequence[str]) -> dict[str, list[Row]]:
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
